"""Fencing: a controller that lost the PostgreSQL leader lock mid-tick makes no further world change
(the executor checks the lock before each call), and what that check costs."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy

from autoscaler.controller import Controller
from autoscaler.domain import IntentStatus
from autoscaler.leader import PostgresLeaderLock
from autoscaler.store import MemoryStore
from autoscaler.testing.controller_rig import STREAMS_QUERY, make_rig
from autoscaler.testing.postgres import POSTGRES_URL
from autoscaler.testing.tcp_proxy import TcpProxy


class StoreThatCutsAfterRecording(MemoryStore):
    """A store that runs ``after_record`` once, right after a tick is recorded (the lock's connection
    is cut between the controller's own leader check and the executor's first call)."""

    after_record: Callable[[], None] | None = None

    def record_tick(
        self,
        pool: str,
        at: datetime,
        inputs: Mapping[str, Any],
        decision: Mapping[str, Any],
        memory: Mapping[str, Any],
        error: str | None = None,
    ) -> int:
        """Record, then cut (once)."""
        tick_id = super().record_tick(pool, at, inputs, decision, memory, error)
        hook, self.after_record = self.after_record, None
        if hook is not None:
            hook()
        return tick_id


def test_leader_cut_off_mid_tick_changes_nothing_more() -> None:
    """Leader A acts through a TCP proxy to PostgreSQL; the proxy is cut after A recorded a scale-out
    tick: A's executor finds the lock gone before the launch, launches nothing, records no intent, and
    the tick's error says so (test_leader.py shows another controller taking over)."""
    url = sqlalchemy.engine.make_url(POSTGRES_URL)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    pool = f"fence-{uuid.uuid4().hex[:8]}"
    lock_a = PostgresLeaderLock(
        url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False), pool
    )
    store = StoreThatCutsAfterRecording()
    rig = make_rig(store=store)
    a = Controller(lambda: rig.policy, rig.controller.adapters, leadership=lock_a)
    try:
        rig.metrics.set(STREAMS_QUERY, 0.0)
        assert "follower" in " ".join(a.tick().notes)  # acquired: acts from its second tick
        assert a.tick().launched  # min 1
        launches = len(rig.provider.launch_calls)
        rig.serve(*(i.id for i in rig.running()))
        rig.clock.advance(15)
        assert a.tick().joined  # serving: in the balancer
        rig.clock.advance(15)
        applies = len(rig.balancer.apply_calls)
        rig.metrics.set(STREAMS_QUERY, 30.0)  # wants max
        store.after_record = proxy.cut
        outcome = a.tick()
        assert outcome.decision is not None and outcome.decision.launch > 0
        assert len(rig.provider.launch_calls) == launches and len(rig.balancer.apply_calls) == applies
        lost = "LeadershipLost: lost the pool's leader lock before a launch"
        assert any(e.startswith(lost) for e in outcome.errors), outcome.errors
        assert store.intents(rig.policy.pool, open_only=True) == []
        assert all(i.status == IntentStatus.OK for i in store.intents(rig.policy.pool))
    finally:
        lock_a.close()
        proxy.close()


def test_leader_check_cost_is_small() -> None:
    """The executor's per-call leader check (one query on the lock's connection) measured on the local
    PostgreSQL: median and p99 of 300 checks, printed, and well under a tick's budget."""
    lock = PostgresLeaderLock(POSTGRES_URL, f"cost-{uuid.uuid4().hex[:8]}")
    try:
        lock.may_act()
        times = []
        for _ in range(300):
            started = time.perf_counter()
            assert lock.still_leader()
            times.append((time.perf_counter() - started) * 1000)
    finally:
        lock.close()
    times.sort()
    median, p99 = statistics.median(times), times[int(len(times) * 0.99) - 1]
    print(f"still_leader(): median {median:.3f} ms, p99 {p99:.3f} ms over {len(times)} checks")
    assert median < 5.0 and p99 < 50.0
