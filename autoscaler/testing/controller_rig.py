"""A controller wired to the recording fakes, with a clock the test moves (shared by the controller tests)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from autoscaler.balancers.fake import FakeBalancer
from autoscaler.controller import Adapters, Controller
from autoscaler.domain import CloudState, Instance
from autoscaler.metrics.fake import FakeMetricsSource
from autoscaler.policy.load import parse_policy
from autoscaler.policy.model import PoolPolicy
from autoscaler.protocols import HistorySource, MetricsSource, Store
from autoscaler.providers.fake import FakeProvider
from autoscaler.store import MemoryStore

STREAMS_QUERY = "streams_per_node"

POLICY = """
pool: unit
provider: {kind: local}
launch:
  model_version: v2
  image: {id: img-v2}
  instance_types: [{name: gpu, streams: 10, price_per_hour: 1.0, weight: 3}]
balancer: {kind: none}
health: {boot_timeout: 60s}
drain: {timeout: 300s}
scaling:
  min_nodes: 1
  max_nodes: 5
  checks:
    - {name: streams, type: target_tracking, query: streams_per_node, target: 7}
  behavior:
    scale_in: {stabilization: 0s}
  on_missing_data: {after_ticks: 2, action: hold}
"""


class MovableClock:
    """A clock that only moves when the test says so."""

    def __init__(self) -> None:
        self.at = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)

    def now(self) -> datetime:
        """The current test instant."""
        return self.at

    def advance(self, seconds: float) -> None:
        """Move forward."""
        self.at += timedelta(seconds=seconds)


@dataclass
class FakeProbe:
    """Health and active streams per instance id, set by the test."""

    health: dict[str, bool] = field(default_factory=dict)
    streams: dict[str, float] = field(default_factory=dict)

    def healthy(self, instance: Instance) -> bool:
        """What the test set (default: not healthy)."""
        return self.health.get(instance.id, False)

    def active_streams(self, instance: Instance) -> float | None:
        """What the test set (default: unknown)."""
        return self.streams.get(instance.id)


@dataclass
class Rig:
    """Everything a controller test touches."""

    controller: Controller
    provider: FakeProvider
    balancer: FakeBalancer
    metrics: Any
    store: Any
    probe: FakeProbe
    clock: MovableClock
    policy: PoolPolicy

    def running(self) -> list[Instance]:
        """The pool's instances, with every pending one moved to running with an address."""
        for instance in self.provider.list_instances("unit"):
            if instance.state == CloudState.PENDING:
                self.provider.set_state(instance.id, CloudState.RUNNING)
                self.provider.set_address(instance.id, "10.0.0.1", 7860)
        return self.provider.list_instances("unit")

    def serve(self, *ids: str) -> None:
        """Mark instances healthy with zero streams."""
        for instance_id in ids:
            self.probe.health[instance_id] = True
            self.probe.streams.setdefault(instance_id, 0)


def make_rig(
    metrics: MetricsSource | None = None, policy_text: str = POLICY, store: Store | None = None
) -> Rig:
    """A controller on fakes (or on ``metrics``, e.g. a real Prometheus source, which also serves the
    forecast's history, and ``store``, e.g. a real database), with a movable clock."""
    clock = MovableClock()
    policy = parse_policy(policy_text.encode(), "unit.yaml")
    provider = FakeProvider(clock=clock)
    balancer, probe = FakeBalancer(), FakeProbe()
    store = store if store is not None else MemoryStore()
    metrics = metrics or FakeMetricsSource()
    # The fake and PrometheusSource both read history too (the forecast's range queries).
    history = metrics if isinstance(metrics, HistorySource) else None
    adapters = Adapters(
        provider=provider, balancer=balancer, metrics=metrics, store=store, probe=probe, clock=clock,
        history=history,
    )
    controller = Controller(lambda: policy, adapters)
    return Rig(controller, provider, balancer, metrics, store, probe, clock, policy)


def serving_pool_of(rig: Rig) -> Callable[[int], list[str]]:
    """A function that brings the pool to ``n`` serving nodes through real ticks (fake metrics only)."""

    def bring(n: int) -> list[str]:
        for _ in range(10):
            # A constant pool-wide load of n nodes' worth, spread over the nodes serving it.
            assert isinstance(rig.metrics, FakeMetricsSource)
            rig.metrics.set(STREAMS_QUERY, 7.0 * n / max(1, sum(rig.probe.health.values())))
            rig.controller.tick()
            rig.serve(*(i.id for i in rig.running()))
            rig.clock.advance(15)
            if len(rig.balancer.current()) >= n:
                break
        ids = sorted(b.instance_id for b in rig.balancer.current())
        assert len(ids) == n, ids
        return ids

    return bring
