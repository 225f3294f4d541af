"""``MemoryStore``: the recording fake of the ``Store`` protocol, for unit tests and the simulator."""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from autoscaler.domain import Intent, IntentKind, IntentStatus, Lifecycle, PruneResult
from autoscaler.errors import StoreError


def _json_copy(value: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of a JSON-ready mapping, as a database store would give it back (and faster than
    ``copy.deepcopy`` on big node tables); ``default=str`` as ``SqlStore`` writes it."""
    copied: dict[str, Any] = json.loads(json.dumps(value, default=str))
    return copied


class MemoryStore:
    """Keeps everything in lists; ``next_error`` makes the next write raise ``StoreError``."""

    def __init__(self) -> None:
        self.ticks: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.memory: dict[str, dict[str, Any]] = {}
        self.next_error: Exception | None = None
        self._last_id = 0
        self.pauses: dict[str, dict[str, Any]] = {}
        #: Every intent recorded, by id (``open_intent``/``close_intent``).
        self.intent_log: dict[int, Intent] = {}
        self._last_intent = 0
        #: Ids of the intents still open: reconcile and every changed balancer apply look them up.
        self._open_intents: set[int] = set()
        #: Latest lifecycle per pool and instance, kept beside ``events`` so that a lookup does not
        #: replay every event ever recorded (a tick asks once per node).
        self._latest: dict[str, dict[str, tuple[Lifecycle, datetime]]] = {}

    def _maybe_fail(self) -> None:
        if self.next_error is not None:
            error, self.next_error = self.next_error, None
            raise StoreError(str(error)) from error

    def record_tick(
        self,
        pool: str,
        at: datetime,
        inputs: Mapping[str, Any],
        decision: Mapping[str, Any],
        memory: Mapping[str, Any],
        error: str | None = None,
    ) -> int:
        """Append a tick; save ``memory`` for ``pool`` when given."""
        self._maybe_fail()
        self._last_id += 1
        tick_id = self._last_id
        self.ticks.append(
            {
                "id": tick_id,
                "pool": pool,
                "at": at.isoformat(),
                "inputs": _json_copy(inputs),
                "decision": _json_copy(decision),
                "error": error,
                "direction": decision.get("direction"),
                "desired": decision.get("desired"),
            }
        )
        if memory:
            self.memory[pool] = copy.deepcopy(dict(memory))
        return tick_id

    def update_tick(self, tick_id: int, *, outcome: Mapping[str, Any], error: str | None = None) -> None:
        """Attach an outcome to a recorded tick."""
        self._maybe_fail()
        tick = next((t for t in reversed(self.ticks) if t["id"] == tick_id), None)
        if tick is None:
            raise StoreError(f"tick {tick_id} does not exist")
        tick["decision"]["outcome"] = dict(outcome)
        if error:
            tick["error"] = f"{tick['error']}; {error}" if tick["error"] else error

    def load_memory(self, pool: str) -> dict[str, Any] | None:
        """The last saved memory of ``pool``."""
        saved = self.memory.get(pool)
        return copy.deepcopy(saved) if saved is not None else None

    def record_lifecycle(
        self,
        pool: str,
        instance_id: str,
        state: Lifecycle,
        at: datetime,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Append a transition unless the instance is already in ``state``."""
        self._maybe_fail()
        latest = self._latest.setdefault(pool, {})
        current = latest.get(instance_id)
        if current is not None and current[0] == state:
            return
        self.events.append(
            {"pool": pool, "instance_id": instance_id, "state": state, "at": at, "detail": dict(detail or {})}
        )
        latest[instance_id] = (state, at)

    def lifecycles(self, pool: str) -> dict[str, tuple[Lifecycle, datetime]]:
        """Latest lifecycle per instance."""
        return dict(self._latest.get(pool, {}))

    def instance_history(self, pool: str, instance_id: str) -> list[dict[str, Any]]:
        """Every transition of one instance, oldest first."""
        return [
            {"state": e["state"].value, "at": e["at"].isoformat(), "detail": e["detail"]}
            for e in self.events
            if e["pool"] == pool and e["instance_id"] == instance_id
        ]

    def recent_ticks(
        self, pool: str, limit: int | None = 20, since: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Newest ticks first; only those at or after ``since`` when given."""
        matching = (
            t for t in reversed(self.ticks)
            if t["pool"] == pool and (since is None or datetime.fromisoformat(t["at"]) >= since)
        )
        # Copy only what is returned: copying every recorded tick made each call (one per
        # controller tick) grow with the store's age.
        return [copy.deepcopy(t) for t in itertools.islice(matching, limit)]

    def prune(self, before: datetime, pool: str | None = None) -> PruneResult:
        """Drop ticks before ``before`` and the records of instances terminated before it."""
        kept = [
            t for t in self.ticks
            if (pool is not None and t["pool"] != pool) or datetime.fromisoformat(t["at"]) >= before
        ]
        removed_ticks, self.ticks = len(self.ticks) - len(kept), kept
        gone = {
            (p, i)
            for p in ({pool} if pool is not None else {e["pool"] for e in self.events})
            for i, (state, at) in self.lifecycles(p).items()
            if state == Lifecycle.TERMINATED and at < before
        }
        events = [e for e in self.events if (e["pool"], e["instance_id"]) not in gone]
        removed_events, self.events = len(self.events) - len(events), events
        # Completed intents go with the ticks they belong to; an open one is kept for reconcile.
        self.intent_log = {
            k: i for k, i in self.intent_log.items()
            if (pool is not None and i.pool != pool)
            or i.created_at >= before
            or i.status == IntentStatus.OPEN
        }
        for gone_pool, instance_id in gone:
            self._latest.get(gone_pool, {}).pop(instance_id, None)
        return PruneResult(ticks=removed_ticks, instance_events=removed_events)

    def set_paused(self, pool: str, paused: bool, at: datetime, reason: str | None = None) -> None:
        """Pause (or resume) ``pool``."""
        self._maybe_fail()
        self.pauses[pool] = {"paused": paused, "reason": reason, "at": at.isoformat()}

    def pause_state(self, pool: str) -> dict[str, Any] | None:
        """The pause as last set for ``pool``, or None."""
        state = self.pauses.get(pool)
        return dict(state) if state is not None else None

    def pools(self) -> list[str]:
        """Every pool with a recorded tick or instance, sorted."""
        return sorted({t["pool"] for t in self.ticks} | {e["pool"] for e in self.events})

    def open_intent(
        self,
        pool: str,
        kind: IntentKind,
        at: datetime,
        *,
        tick_id: int | None = None,
        instance_ids: tuple[str, ...] = (),
        token: str | None = None,
        count: int = 0,
        detail: Mapping[str, Any] | None = None,
        status: IntentStatus = IntentStatus.OPEN,
    ) -> int:
        """Record an intent; return its id."""
        self._maybe_fail()
        self._last_intent += 1
        intent_id = self._last_intent
        if status == IntentStatus.OPEN:
            self._open_intents.add(intent_id)
        self.intent_log[intent_id] = Intent(
            id=intent_id, pool=pool, kind=IntentKind(kind), created_at=at, status=IntentStatus(status),
            tick_id=tick_id, instance_ids=tuple(instance_ids), token=token, count=count,
            detail=copy.deepcopy(dict(detail or {})),
        )
        return intent_id

    def close_intent(
        self,
        intent_id: int,
        status: IntentStatus,
        at: datetime,
        *,
        result: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Complete an intent."""
        self._maybe_fail()
        intent = self.intent_log.get(intent_id)
        if intent is None:
            raise StoreError(f"intent {intent_id} does not exist")
        self._open_intents.discard(intent_id)
        self.intent_log[intent_id] = replace(
            intent, status=IntentStatus(status), result=copy.deepcopy(dict(result or {})), error=error,
            closed_at=at,
        )

    def intents(
        self, pool: str, *, open_only: bool = False, tick_id: int | None = None, limit: int | None = None
    ) -> list[Intent]:
        """Intents of ``pool``, oldest first."""
        open_ones = (self.intent_log[k] for k in sorted(self._open_intents))
        candidates = open_ones if open_only else self.intent_log.values()
        found = [i for i in candidates if i.pool == pool and (tick_id is None or i.tick_id == tick_id)]
        return found if limit is None else found[-limit:] if limit else []
