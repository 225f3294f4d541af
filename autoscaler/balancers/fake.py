"""An in-memory ``Balancer`` that records every call, for controller and executor tests.

Shaped like the provider fake: ``apply_calls`` records each ``apply`` (accepted or not),
``changes`` counts the applies that changed the list (what a real balancer would reload for),
``next_apply_error`` / ``next_current_error`` make the next call of that kind fail once, and
``reset()`` forgets everything.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from autoscaler.domain import Backend
from autoscaler.errors import BalancerError


def _key(backends: Sequence[Backend]) -> frozenset[Backend]:
    return frozenset(backends)


class FakeBalancer:
    """A ``Balancer`` whose backend list lives in memory."""

    name = "fake"

    def __init__(self, initial: Sequence[Backend] = ()) -> None:
        self._lock = threading.Lock()
        self._initial = tuple(initial)
        self.reset()

    def reset(self) -> None:
        """Back to the initial list; forget recorded calls, change count and pending errors."""
        with self._lock:
            self._backends: tuple[Backend, ...] = self._initial
            #: The backend list of every ``apply`` call, in order (rejected ones included).
            self.apply_calls: list[tuple[Backend, ...]] = []
            #: How many ``apply`` calls changed the list in force.
            self.changes = 0
            #: Raised (once) by the next ``apply``, which then leaves the list unchanged.
            self.next_apply_error: BalancerError | None = None
            #: Raised (once) by the next ``current``.
            self.next_current_error: BalancerError | None = None

    def current(self) -> list[Backend]:
        """The list in force (or the injected ``next_current_error``)."""
        with self._lock:
            error, self.next_current_error = self.next_current_error, None
            if error is not None:
                raise error
            return list(self._backends)

    def apply(self, backends: Sequence[Backend]) -> None:
        """Record the call; put ``backends`` in force unless ``next_apply_error`` is set.

        Raises ``BalancerError`` for a duplicate instance id, as a real balancer would refuse it.
        """
        with self._lock:
            wanted = tuple(backends)
            self.apply_calls.append(wanted)
            error, self.next_apply_error = self.next_apply_error, None
            if error is not None:
                raise error
            ids = [b.instance_id for b in wanted]
            if len(ids) != len(set(ids)):
                raise BalancerError("an instance appears twice in the backend list")
            if _key(wanted) != _key(self._backends):
                self._backends = wanted
                self.changes += 1

    @property
    def backend_ids(self) -> set[str]:
        """Instance ids of the backends in force."""
        with self._lock:
            return {b.instance_id for b in self._backends}
