"""What a tick costs does not grow with the pool or with time: the properties the speed benchmarks
(benchmarks/tick_speed.py, prometheus_queries.py, tick_memory.py) time, pinned without timing."""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from autoscaler.controller import TickOutcome
from autoscaler.domain import Decision, Reason
from autoscaler.store import MemoryStore
from autoscaler.telemetry import ControllerMetrics
from autoscaler.testing.big_pool import BigPool, big_pool


class CountingStore(MemoryStore):
    """The in-memory store, counting calls per method name."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def record_lifecycle(self, *args: Any, **kwargs: Any) -> None:
        """Counted."""
        self.calls["record_lifecycle"] += 1
        super().record_lifecycle(*args, **kwargs)

    def recent_ticks(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """Counted."""
        self.calls["recent_ticks"] += 1
        return super().recent_ticks(*args, **kwargs)


def _steady_ticks(pool: BigPool, ticks: int) -> None:
    for _ in range(ticks):
        pool.tick()
        pool.world_step()


def _calls_per_tick(nodes: int) -> set[tuple[int, int, int]]:
    pool = big_pool(nodes)
    _steady_ticks(pool, 2)
    seen = set()
    for _ in range(3):
        pool.forget_calls()
        pool.tick()
        rig = pool.rig
        seen.add((len(pool.metrics.calls), len(rig.provider.list_calls), len(rig.balancer.apply_calls)))
        pool.world_step()
    return seen


def test_metrics_queries_per_tick_do_not_grow_with_the_node_count() -> None:
    """A pool of 500 nodes asks the metrics source, the provider and the balancer as often as one of 5."""
    assert _calls_per_tick(5) == _calls_per_tick(500) == {(1, 1, 1)}


def test_a_steady_tick_writes_no_lifecycle_record_per_node() -> None:
    """Serving nodes that stay serving cost no store write and no re-read of past ticks, however many."""
    store = CountingStore()
    pool = big_pool(300, store=store)
    _steady_ticks(pool, 2)
    store.calls.clear()
    _steady_ticks(pool, 5)
    assert store.calls["record_lifecycle"] == 0
    assert store.calls["recent_ticks"] == 0  # the boot-failure streak is kept, not re-read


def test_the_boot_failure_streak_kept_in_memory_matches_the_store() -> None:
    """The streak the controller keeps from its own ticks equals the one read back from the store."""
    pool = big_pool(20)
    for _ in range(60):
        pool.set_load(30)
        pool.tick()
        # No world step: nothing launched ever comes up, and fails the policy's 600 s boot timeout.
        pool.rig.clock.advance(15)
        pool.forget_calls()
    controller = pool.rig.controller
    kept = controller._boot_ticks["unit"]
    assert controller.boot_failures("unit") == _streak_of(kept)
    assert controller.boot_failures("unit")[0] > 0


def _streak_of(window: Any) -> tuple[int, datetime | None]:
    from autoscaler.controller import _streak

    return _streak(window)


def test_bookkeeping_does_not_grow_over_hours_of_churn() -> None:
    """After hours of nodes coming and going, the store, the controller's per-node tables and the
    telemetry hold no more than after the first hours (retention prunes, gone nodes are forgotten)."""
    pool = big_pool(20, max_nodes=60, warm=True)
    controller = pool.rig.controller
    store = pool.rig.store
    assert isinstance(store, MemoryStore)
    sizes: list[tuple[int, ...]] = []
    for k in range(1, 722):
        pool.set_load(20 * (1 + 0.5 * math.sin(2 * math.pi * k / 240)))
        pool.tick()
        pool.world_step()
        pool.forget_calls()
        # Just after retention's hourly prunes (ticks 1, 241, 481, 721), at the same phase of the
        # wave, two hours apart: kept records at most an hour and a tick old, whatever the churn.
        if k in (241, 721):
            tables = (store.ticks, store.events, store.lifecycles("unit"), controller._failed_probes,
                      controller._backend_problems)
            sizes.append(tuple(len(t) for t in tables))
    first, last = sizes
    assert all(b <= a * 1.3 + 5 for a, b in zip(first, last, strict=True)), sizes
    assert len(controller._boot_ticks["unit"]) <= 100
    live = {i.id for i in pool.rig.provider.list_instances("unit")}
    assert set(controller._failed_probes) <= live
    assert set(controller._backend_problems) <= live


def test_warm_discard_reasons_are_not_labelled_per_node() -> None:
    """Discarding warm instances counts under one `discard` label, not one label set per instance id."""
    metrics = ControllerMetrics()
    at = datetime(2026, 11, 28, tzinfo=UTC)
    for instance_id in ("i-1", "i-2", "i-3"):
        reasons = (
            Reason("warm", instance_id, f"discard warm {instance_id}: outdated", {}),
            Reason("final", "unit", "scale out", {}),
        )
        decision = Decision(pool="unit", at=at, ready=1, booting=0, draining=0, desired=2, launch=1,
                            victims=(), reasons=reasons)
        metrics.tick_done("unit", TickOutcome(pool="unit", at=at, decision=decision), 0.01)
    names = {
        s.labels["name"]
        for family in metrics.registry.collect()
        if family.name == "autoscaler_decision_reasons"
        for s in family.samples
        if s.labels.get("kind") == "warm"
    }
    assert names == {"discard"}
