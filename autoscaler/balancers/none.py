"""``NoBalancer``: for pools whose clients find nodes themselves (or the HPA-like baseline).

It keeps the list it was given so the controller's bookkeeping (who is serving) stays the same.
"""

from __future__ import annotations

from collections.abc import Sequence

from autoscaler.domain import Backend


class NoBalancer:
    """A ``Balancer`` with nothing behind it: ``apply`` records, ``current`` returns the record."""

    name = "none"

    def __init__(self) -> None:
        self._backends: list[Backend] = []

    def current(self) -> list[Backend]:
        """The last list applied."""
        return list(self._backends)

    def apply(self, backends: Sequence[Backend]) -> None:
        """Remember ``backends``; there is nothing to reconfigure."""
        self._backends = list(backends)
