"""Back off from launch offers that just said no: an instance type with no stock in a zone, or a quota.

Without memory, a pool that wants capacity the cloud does not have asks again every tick, in every
type and zone it may use: four ``RunInstances`` per tick for two types in two zones, for as long as
the shortage lasts, each one counted against the account's API rate limit (and, on ECS, each a
throttling risk for the other pools of the account). An ``OfferBackoff`` remembers each refusal:

- an **offer** (instance type, zone or subnet) that answered "no stock" is skipped until its pause
  ends; the pause starts at ``base_s`` and doubles with each further refusal in a row, up to
  ``max_s`` (EC2 Auto Scaling pauses an AZ/type after ``InsufficientInstanceCapacity`` the same way);
- a **quota** refusal pauses the *quota group* it used up, on the same schedule: an EC2 On-Demand
  vCPU class ("G and VT", "P", ...), one instance type (``InstanceLimitExceeded``), an ECS instance
  family, or the whole account (``autoscaler.providers.quota_groups`` maps types and error codes to
  groups). Types outside the group are still asked: a ``VcpuLimitExceeded`` for ``g5.xlarge``
  says nothing about ``p4d.24xlarge``;
- one launch that gets an instance from an offer clears its pause and the quota pauses of its groups.

A launch whose every offer is paused makes no request at all: the provider raises
``InsufficientCapacity`` / ``QuotaExceeded`` naming when the next attempt will be made, so the tick
reports the shortage without spending API calls on it. Nothing here does I/O; ``clock`` is
injectable so tests can move time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

#: The first half of the key of a quota group's pause (the second half is the group's name).
QUOTA = "*quota*"


@dataclass
class _Pause:
    refusals: int
    until: float
    why: str


class OfferBackoff:
    """Per-offer pauses after no-stock refusals, and per-quota-group pauses after quota refusals.

    ``base_s`` is the first pause, doubled per further refusal in a row up to ``max_s``.
    Thread-safe (a provider may be shared by a tick and a status command).
    """

    def __init__(self, *, base_s: float = 30.0, max_s: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if base_s <= 0 or max_s < base_s:
            raise ValueError(f"invalid backoff: base {base_s} s, max {max_s} s")
        self.base_s = base_s
        self.max_s = max_s
        self._clock = clock
        self._lock = threading.Lock()
        self._pauses: dict[tuple[str, str], _Pause] = {}

    def paused_for(self, instance_type: str, zone: str) -> float:
        """Seconds until ``(instance_type, zone)`` may be asked again (0: ask now)."""
        return self._left((instance_type, zone))

    def quota_paused_for(self, groups: Iterable[str]) -> float:
        """Seconds until a type counting against ``groups`` may be asked again (0: ask now).

        The longest pause of any of the groups: a type is blocked while any quota it needs is.
        """
        return max((self._left((QUOTA, group)) for group in groups), default=0.0)

    def why(self, instance_type: str, zone: str) -> str:
        """The refusal that paused the offer ("" when it is not paused)."""
        with self._lock:
            pause = self._pauses.get((instance_type, zone))
            return pause.why if pause else ""

    def quota_why(self, groups: Iterable[str]) -> str:
        """The refusal of the first paused group among ``groups``, with the group's name ("" when none)."""
        now = self._clock()
        with self._lock:
            for group in groups:
                pause = self._pauses.get((QUOTA, group))
                if pause and pause.until > now:
                    return f"quota group {group!r}: {pause.why}"
            return ""

    def no_stock(self, instance_type: str, zone: str, why: str) -> float:
        """Record a no-stock refusal of the offer; return the pause (seconds) before it is asked again."""
        return self._refused((instance_type, zone), why)

    def quota(self, group: str, why: str) -> float:
        """Record a quota refusal of ``group``; return the pause (s) before its types are asked again."""
        return self._refused((QUOTA, group), why)

    def served(self, instance_type: str, zone: str, groups: Iterable[str] = ()) -> None:
        """The offer gave at least one instance: forget its pause and the quota pauses of ``groups``
        (the quota groups of ``instance_type``, which evidently had room)."""
        with self._lock:
            self._pauses.pop((instance_type, zone), None)
            for group in groups:
                self._pauses.pop((QUOTA, group), None)

    def _left(self, key: tuple[str, str]) -> float:
        with self._lock:
            pause = self._pauses.get(key)
            return max(0.0, pause.until - self._clock()) if pause else 0.0

    def _refused(self, key: tuple[str, str], why: str) -> float:
        with self._lock:
            previous = self._pauses.get(key)
            refusals = previous.refusals + 1 if previous else 1
            pause = float(min(self.max_s, self.base_s * 2 ** (refusals - 1)))
            self._pauses[key] = _Pause(refusals=refusals, until=self._clock() + pause, why=why)
            return pause
