"""Plain, frozen values shared by every part: what an instance is, what a backend is, what a sample is,
and what a decision says. No I/O, no SDK imports: the engine and the simulator depend on this module only.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

#: Tag keys every provider writes on instances (and volumes where the cloud has them).
TAG_POOL = "autoscaler:pool"
TAG_MODEL_VERSION = "autoscaler:model-version"
TAG_LAUNCH_TOKEN = "autoscaler:launch-token"
#: The port the node serves on, so a restarted controller knows it without the policy.
TAG_PORT = "autoscaler:port"
TAG_MANAGED_BY = "managed-by"
MANAGED_BY_VALUE = "gpu-autoscaler"


class CloudState(StrEnum):
    """Where the provider says an instance is; the controller derives the lifecycle from it."""

    PENDING = "pending"
    RUNNING = "running"
    #: On its way down: being stopped (to ``STOPPED``) or shutting down (to ``TERMINATED``).
    STOPPING = "stopping"
    #: Powered off but kept, with its disk (a warm-pool instance): bills the disk only, serves nothing.
    STOPPED = "stopped"
    TERMINATED = "terminated"


class Lifecycle(StrEnum):
    """The controller's view of a node, recorded in the store on every change."""

    LAUNCHING = "launching"
    BOOTING = "booting"
    SERVING = "serving"
    DRAINING = "draining"
    TERMINATED = "terminated"
    #: Launched cold for the warm pool: must pass its health check (model loaded), then is stopped.
    #: Never joins the balancer, never counts as capacity.
    PREPARING = "preparing"
    #: In the warm pool: model loaded on its disk, powered off (or running idle, for ``state: running``).
    STOPPED = "stopped"
    #: Started from the warm pool: capacity on the way, within the warm start timeout.
    STARTING = "starting"


class TerminateOutcome(StrEnum):
    """What ``Provider.terminate`` did for one instance id."""

    TERMINATING = "terminating"
    ALREADY_GONE = "already-gone"


class StopOutcome(StrEnum):
    """What ``Provider.stop`` did for one instance id."""

    #: A stop was requested (or one already in progress was confirmed).
    STOPPING = "stopping"
    #: The instance was stopped already: nothing to do.
    ALREADY_STOPPED = "already-stopped"
    #: Unknown to the provider, terminated or shutting down: there is nothing to stop.
    ALREADY_GONE = "already-gone"


class StartOutcome(StrEnum):
    """What ``Provider.start`` did for one instance id."""

    #: A start was requested; the instance comes back with its disk (pending, then running).
    STARTING = "starting"
    #: The instance was pending or running already: nothing to do.
    ALREADY_RUNNING = "already-running"
    #: Unknown to the provider, terminated or shutting down: it cannot be started, replace it.
    ALREADY_GONE = "already-gone"
    #: The provider has no stock to start it now (economical-mode stops give the GPU back).
    NO_CAPACITY = "no-capacity"


@dataclass(frozen=True)
class Instance:
    """One machine of a pool as the provider reports it."""

    id: str
    pool: str
    instance_type: str
    model_version: str
    launch_token: str
    launched_at: datetime
    state: CloudState
    address: str | None = None
    port: int = 7860
    zone: str | None = None
    image: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str | None:
        """``host:port`` the node serves on, once it has an address."""
        return f"{self.address}:{self.port}" if self.address else None


@dataclass(frozen=True)
class LaunchSpec:
    """What to launch: everything a provider needs that is not provider configuration."""

    pool: str
    image: str
    model_version: str
    instance_types: tuple[str, ...]
    port: int = 7860
    user_data: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LaunchResult:
    """Instances that exist for a client token after ``Provider.launch``, and why any are missing.

    ``shortfall`` is ``None`` when ``len(instances) == count``; otherwise it names what stopped the
    provider ("quota", "capacity") and ``notes`` says what was tried.
    """

    instances: tuple[Instance, ...]
    shortfall: str | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Backend:
    """One ``server`` line of a balancer: where traffic goes and how much of it."""

    address: str
    port: int
    instance_id: str
    weight: int = 1
    max_fails: int = 2
    fail_timeout_s: int = 30
    backup: bool = False

    @property
    def endpoint(self) -> str:
        """``host:port`` of the backend."""
        return f"{self.address}:{self.port}"


#: Instance ids of every supported cloud (``i-0abc``, ``local-3f2a``...): letters, digits, ``._-``.
_INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def backend_problem(backend: Backend) -> str | None:
    """Why ``backend`` must not reach a balancer's configuration, or None when it may.

    Everything in a ``Backend`` comes from outside (the provider's inventory, instance tags), so
    each field is checked against the few shapes it can legitimately take: an IP address, a port
    1-65535, an instance id of letters, digits and ``._-``, small non-negative integers for the
    server parameters. Anything else (``;``, braces, whitespace, a NUL, quotes,
    ``-1``, ``70000``) is refused here, so no value can add a directive to a rendered file.
    """
    address = backend.address
    if not isinstance(address, str) or not address:
        return f"address {address!r} is empty"
    try:
        # An IPv6 scope (``fe80::1%eth0``) may hold any text: never a backend's address.
        if "%" in address:
            raise ValueError(address)
        ipaddress.ip_address(address)
    except ValueError:
        # Providers report IP addresses. A host name would make nginx resolve it at every reload,
        # and one that does not resolve fails `nginx -t` for the whole pool.
        return f"address {address!r} is not an IP address"
    if not _is_int(backend.port) or not 1 <= backend.port <= 65535:
        return f"port {backend.port!r} is not in 1-65535"
    if not isinstance(backend.instance_id, str) or not _INSTANCE_ID.fullmatch(backend.instance_id):
        return f"instance id {backend.instance_id!r} is not letters, digits and ._- (at most 128)"
    for name, value, low, high in (
        ("weight", backend.weight, 1, 1000),
        ("max_fails", backend.max_fails, 0, 1000),
        ("fail_timeout", backend.fail_timeout_s, 0, 86_400),
    ):
        if not _is_int(value) or not low <= value <= high:
            return f"{name} {value!r} is not an integer in {low}-{high}"
    if not isinstance(backend.backup, bool):
        return f"backup {backend.backup!r} is not a boolean"
    return None


@dataclass(frozen=True)
class Sample:
    """One scalar reading of a query. ``value is None`` means *no data*, never zero; ``error`` says why."""

    value: float | None
    observed_at: datetime | None = None
    error: str | None = None

    @classmethod
    def missing(cls, error: str) -> Sample:
        """A reading that produced no usable number, with the reason."""
        return cls(value=None, observed_at=None, error=error)

    @property
    def has_data(self) -> bool:
        """True when the value is a finite number."""
        return self.value is not None and math.isfinite(self.value)


@dataclass(frozen=True)
class Node:
    """A node as the decision engine sees it: lifecycle, capacity and load, nothing cloud-specific."""

    id: str
    lifecycle: Lifecycle
    instance_type: str
    capacity_streams: int
    model_version: str
    launched_at: datetime
    active_streams: float | None = None
    image: str | None = None
    #: Tagged ``autoscaler:do-not-disrupt``: never chosen for scale-in, replacement or expiry.
    protected: bool = False


#: The tag (label) that protects one node from voluntary disruption, as Karpenter's do-not-disrupt.
DO_NOT_DISRUPT_TAG = "autoscaler:do-not-disrupt"


@dataclass(frozen=True)
class Reason:
    """One step of a decision's reason trail: a check's vote, a cap, a window, a fallback.

    ``kind`` is one of ``check``, ``schedule``, ``bound``, ``window``, ``rate``, ``cooldown``, ``warm``,
    ``fallback``, ``capacity``, ``victim``, ``final``. ``detail`` holds the numbers (query, value,
    vote, factor, before/after) so reports and logs only render.
    """

    kind: str
    name: str
    message: str
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for the store and ``explain --json``."""
        return {"kind": self.kind, "name": self.name, "message": self.message, "detail": dict(self.detail)}


class Direction(StrEnum):
    """Which way a decision moves the pool."""

    OUT = "out"
    IN = "in"
    HOLD = "hold"


@dataclass(frozen=True)
class Decision:
    """What the engine decided for one pool at one instant, and why.

    ``desired`` counts nodes that are serving or booting (draining nodes are not capacity).
    ``launch`` nodes are to be launched cold; ``start`` (warm-pool ids) are to be started first;
    ``victims`` (node ids, in order) are to be drained. For the warm pool: ``prepare`` instances are
    to be launched cold and stopped once healthy, ``discard`` (warm ids: outdated or beyond the
    pool's size) terminated, and ``warm_target`` is the warm pool's size now (a drained victim is
    stopped into the pool while it holds fewer, when the policy reuses nodes on scale-in).
    """

    pool: str
    at: datetime
    ready: int
    booting: int
    draining: int
    desired: int
    launch: int
    victims: tuple[str, ...]
    reasons: tuple[Reason, ...]
    start: tuple[str, ...] = ()
    prepare: int = 0
    discard: tuple[str, ...] = ()
    warm: int = 0
    warm_target: int = 0

    @property
    def current(self) -> int:
        """Nodes that count as capacity now or soon: serving plus booting."""
        return self.ready + self.booting

    @property
    def direction(self) -> Direction:
        """OUT when launching or starting warm nodes, IN when draining victims, HOLD otherwise."""
        if self.launch > 0 or self.start:
            return Direction.OUT
        if self.victims:
            return Direction.IN
        return Direction.HOLD

    def summary(self) -> str:
        """One line for logs: ``hold 6 (ready 5, booting 1)`` and the final reason."""
        final = next((r.message for r in reversed(self.reasons) if r.kind == "final"), "")
        warm = f", warm {self.warm}/{self.warm_target}" if self.warm or self.warm_target else ""
        return (
            f"{self.direction.value} {self.current}→{self.desired} "
            f"(ready {self.ready}, booting {self.booting}, draining {self.draining}{warm}) {final}"
        ).strip()


@dataclass(frozen=True)
class PruneResult:
    """Rows one ``Store.prune`` deleted."""

    ticks: int
    instance_events: int


class IntentKind(StrEnum):
    """What world change an intent announces (``autoscaler.executor``)."""

    LAUNCH = "launch"
    TERMINATE = "terminate"
    STOP = "stop"
    START = "start"
    #: A new backend list put in force on the balancer (joins and leaves).
    BALANCER = "balancer"


class IntentStatus(StrEnum):
    """Where an intent is: recorded before its call (``OPEN``), completed after it, or settled later."""

    OPEN = "open"
    OK = "ok"
    FAILED = "failed"
    #: Found open after a crash and settled against the provider's inventory (``reason`` says how).
    RECONCILED = "reconciled"
    #: Recorded by a shadow-mode controller: what it would have done; never called.
    SHADOW = "shadow"


@dataclass(frozen=True)
class Intent:
    """One world change as the store keeps it: announced before the call, completed after it."""

    id: int
    pool: str
    kind: IntentKind
    created_at: datetime
    status: IntentStatus = IntentStatus.OPEN
    tick_id: int | None = None
    instance_ids: tuple[str, ...] = ()
    #: The launch's client token (launches only): the provider's idempotency key and its tag.
    token: str | None = None
    count: int = 0
    detail: Mapping[str, Any] = field(default_factory=dict)
    #: What the provider or balancer returned (ok), or how a reconcile settled it.
    result: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    closed_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``history --json``, logs)."""
        return {
            "id": self.id,
            "pool": self.pool,
            "kind": self.kind.value,
            "status": self.status.value,
            "tick_id": self.tick_id,
            "instance_ids": list(self.instance_ids),
            "token": self.token,
            "count": self.count,
            "detail": dict(self.detail),
            "result": dict(self.result),
            "error": self.error,
            "created_at": self.created_at.isoformat(),
            "closed_at": self.closed_at.isoformat() if self.closed_at else None,
        }
