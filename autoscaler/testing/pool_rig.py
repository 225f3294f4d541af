"""Pools on the recording fakes, built from real policy files: the ``build`` a ``PoolSet`` takes in
tests and in ``benchmarks/many_pools.py``.

Each pool's "cloud" (a ``FakeProvider``, ``FakeBalancer``, ``FakeMetricsSource`` and probe) lives in
``FakePools.fleets`` by pool name and outlives the pool's runtime, as a real cloud outlives a
controller that stops managing it: a test can look at a removed pool's nodes afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from autoscaler.balancers.fake import FakeBalancer
from autoscaler.clock import SystemClock
from autoscaler.controller import Adapters, Controller, TickOutcome
from autoscaler.domain import CloudState, Instance
from autoscaler.metrics.fake import FakeMetricsSource
from autoscaler.policy.load import PolicyWatcher
from autoscaler.protocols import Clock, Store
from autoscaler.providers.fake import FakeProvider
from autoscaler.store import MemoryStore
from autoscaler.telemetry import ControllerMetrics
from autoscaler.testing.controller_rig import STREAMS_QUERY, FakeProbe
from autoscaler.wiring import Runtime

#: A pool on the fakes; ``{pool}`` and ``{extra}`` (more ``scaling`` keys) are filled in.
POOL_POLICY = """\
pool: {pool}
provider: {{kind: local}}
launch:
  model_version: v1
  instance_types: [{{name: gpu, streams: 10, price_per_hour: 1.0}}]
balancer: {{kind: none}}
health: {{boot_timeout: 120s}}
drain: {{timeout: 60s}}
scaling:
  min_nodes: {min_nodes}
  max_nodes: 20
  checks:
    - {{name: streams, type: target_tracking, query: {query}, target: 7}}
  behavior:
    scale_in: {{stabilization: 0s}}
{extra}"""


def pool_policy(pool: str, *, min_nodes: int = 1, extra: str = "") -> str:
    """The text of a fake pool's policy file."""
    return POOL_POLICY.format(pool=pool, min_nodes=min_nodes, query=STREAMS_QUERY, extra=extra)


class GatedProvider(FakeProvider):
    """A ``FakeProvider`` whose ``list_instances`` waits while ``gate`` is clear: a cloud API that
    hangs (a test clears the gate, the pool's tick blocks in observe, and sets it to release)."""

    def __init__(self, *, clock: Clock | None = None) -> None:
        super().__init__(clock=clock)
        self.gate = threading.Event()
        self.gate.set()
        #: Calls now waiting at the gate.
        self.waiting = 0

    def list_instances(self, pool: str) -> list[Instance]:
        """The pool's instances, once the gate is open."""
        self.waiting += 1
        try:
            self.gate.wait()
        finally:
            self.waiting -= 1
        return super().list_instances(pool)


@dataclass
class FakeFleet:
    """One pool's fake cloud, balancer, metrics and node probe, and how often its runtime closed."""

    provider: GatedProvider
    balancer: FakeBalancer = field(default_factory=FakeBalancer)
    metrics: FakeMetricsSource = field(default_factory=FakeMetricsSource)
    probe: FakeProbe = field(default_factory=FakeProbe)
    store: Store = field(default_factory=MemoryStore)
    closed: int = 0

    def close(self) -> None:
        """Called by ``Runtime.close`` (the pool's adapters closed)."""
        self.closed += 1

    def settle(self) -> None:
        """What a cloud does between ticks: pending instances run, get an address and pass health."""
        for instance in self.provider.instances:
            if instance.state == CloudState.PENDING:
                self.provider.set_state(instance.id, CloudState.RUNNING)
                self.provider.set_address(instance.id, "10.0.0.1", 7860)
                self.probe.health[instance.id] = True
                self.probe.streams.setdefault(instance.id, 0.0)


class FakePools:
    """``build`` for a ``PoolSet``: a runtime on a fake fleet per pool, sharing ``telemetry``.

    ``load`` (streams per node) is what each pool's metrics report; each pool has its own
    ``MemoryStore`` (a pool ticks on one thread at a time, and the fake store is not locked) unless
    ``store`` (a real one, shared by every pool) is given.
    """

    def __init__(
        self,
        telemetry: ControllerMetrics | None = None,
        *,
        clock: Clock | None = None,
        load: float = 7.0,
        store: Store | None = None,
    ) -> None:
        self.telemetry = telemetry or ControllerMetrics()
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.load = load
        self.fleets: dict[str, FakeFleet] = {}
        self._lock = threading.Lock()

    def fleet(self, pool: str) -> FakeFleet:
        """The pool's fleet (created on first use; kept after the pool is removed)."""
        with self._lock:
            if pool not in self.fleets:
                fleet = FakeFleet(provider=GatedProvider(clock=self.clock))
                if self.store is not None:
                    fleet.store = self.store
                fleet.metrics.set(STREAMS_QUERY, self.load)
                self.fleets[pool] = fleet
            return self.fleets[pool]

    def build(self, path: Path) -> Runtime:
        """The pool's runtime: a ``PolicyWatcher`` on ``path`` and the pool's fake adapters."""
        watcher = PolicyWatcher(path)
        fleet = self.fleet(watcher.current().pool)
        adapters = Adapters(
            provider=fleet.provider, balancer=fleet.balancer, metrics=fleet.metrics, store=fleet.store,
            probe=fleet.probe, clock=self.clock, history=fleet.metrics,
        )

        def policy_error() -> str | None:
            error = watcher.last_error
            return "; ".join(error.problems) or str(error) if error else None

        controller = Controller(
            watcher.current, adapters, telemetry=self.telemetry, policy_error=policy_error
        )
        return Runtime(controller=controller, watcher=watcher, store=fleet.store, closers=[fleet])

    def settle_after(self) -> Callable[[TickOutcome], None]:
        """An ``on_tick`` for ``PoolService``: settle the ticked pool's fleet."""

        def on_tick(outcome: TickOutcome) -> None:
            self.fleet(outcome.pool).settle()

        return on_tick
