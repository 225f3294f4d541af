"""One exception type per failure mode.

Adapters raise these (chained with ``raise ... from`` to the SDK error) so the controller can
react to *what* failed rather than to which library failed. Only the tick boundary catches
broadly; everything else catches the narrowest type it can handle.
"""

from __future__ import annotations


class AutoscalerError(Exception):
    """Base class of every error this package raises on purpose."""


class PolicyError(AutoscalerError):
    """A policy file is unreadable or invalid; ``problems`` lists every finding."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = problems or []


class PoolSelectionError(AutoscalerError):
    """A ``--policies`` directory or ``--policy``/``--pool`` selection cannot be used (not a directory,
    unreadable, or selecting nothing)."""


class DuplicatePoolError(PolicyError):
    """A second policy file names a pool that another selected file already defines."""


class ScenarioError(AutoscalerError):
    """A dry-run scenario or its demand source is unusable (missing file, malformed trace, bad window)."""


class SweepError(ScenarioError):
    """A policy sweep file is invalid, or names a parameter path or value the policy rejects.

    ``problems`` lists every finding as ``file:line:column: where: message``.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = problems or []


class MetricsUnavailable(AutoscalerError):
    """The metrics backend could not be queried at all (down, timeout, HTTP error)."""


class ProviderError(AutoscalerError):
    """A cloud or local provider call failed after its retry budget."""


class TransientProviderError(ProviderError):
    """Throttling or a 5xx that outlived the retry budget; the next tick may succeed."""


class InsufficientCapacity(ProviderError):
    """The provider has no stock of an instance type in a zone; try the next type or zone."""

    def __init__(self, message: str, instance_type: str | None = None, zone: str | None = None) -> None:
        super().__init__(message)
        self.instance_type = instance_type
        self.zone = zone


class QuotaExceeded(ProviderError):
    """Quotas block launching every listed instance type (each type's quota group refused or is
    paused, ``autoscaler.providers.quota_groups``); no further scale-out this tick."""


class InstanceNotFound(ProviderError):
    """The instance does not exist (never did, or is already gone)."""


class BalancerError(AutoscalerError):
    """The balancer rejected or failed to apply a backend list; the previous list still serves."""


class StoreError(AutoscalerError):
    """The decision store could not be read or written."""


class LeadershipLost(AutoscalerError):
    """This controller no longer holds the pool's leader lock: it must not change the world (fencing)."""
