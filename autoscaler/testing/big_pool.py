"""A controller over a pool of thousands of nodes on the recording fakes (speed and memory benchmarks).

``big_pool(n)`` builds the controller rig of ``controller_rig`` with ``n`` serving nodes already in
place (running, healthy, recorded serving, in the balancer), without ticking them up one launch at a
time. ``BigPool.world_step`` plays the world between ticks: instances launched last tick come up
and answer their health check, draining nodes finish their streams. ``BigPool.forget_calls`` drops
what the recording fakes recorded (and the terminated instances the fake cloud still lists), so a
long run measures the controller, not the fakes' logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from autoscaler.controller import TickOutcome
from autoscaler.domain import Backend, CloudState, Instance, Lifecycle
from autoscaler.metrics.fake import FakeMetricsSource
from autoscaler.protocols import Store
from autoscaler.store.retention import Retention
from autoscaler.testing.controller_rig import STREAMS_QUERY, Rig, make_rig

POOL = "unit"

#: The rig's policy with room for the big pool: target tracking on streams per node, no scale-in
#: window (so a load change moves the pool on the next tick) and a 1 h retention of tick records.
POLICY_TEMPLATE = """
pool: unit
provider: {{kind: local}}
launch:
  model_version: v2
  image: {{id: img-v2}}
  instance_types: [{{name: gpu, streams: 10, price_per_hour: 1.0, weight: 1}}]
balancer: {{kind: none}}
health: {{boot_timeout: 600s}}
drain: {{timeout: 300s}}
scaling:
  min_nodes: 1
  max_nodes: {max_nodes}
  checks:
    - {{name: streams, type: target_tracking, query: streams_per_node, target: 7, tolerance: 0.02}}
  behavior:
    scale_in: {{stabilization: 0s}}
  on_missing_data: {{after_ticks: 2, action: hold}}
store: {{retention: 1h}}
"""

#: A warm pool for the pool above (``big_pool(..., warm=True)``): scale-in stops drained nodes into it.
WARM_POOL = """
warm_pool: {size: 2, state: stopped, reuse_on_scale_in: true, start_timeout: 120s}
"""


@dataclass
class BigPool:
    """A rig with a big serving pool, and the world moves a benchmark needs between ticks."""

    rig: Rig
    retention: Retention

    @property
    def metrics(self) -> FakeMetricsSource:
        """The fake metrics source the pool's check reads."""
        assert isinstance(self.rig.metrics, FakeMetricsSource)
        return self.rig.metrics

    def set_load(self, nodes_worth: float) -> None:
        """Pool-wide load of ``nodes_worth`` nodes at the target, spread over the serving nodes."""
        serving = max(1, len(self.rig.balancer.backend_ids))
        self.metrics.set(STREAMS_QUERY, 7.0 * nodes_worth / serving)

    def tick(self) -> TickOutcome:
        """One controller tick, then retention as ``autoscaler run`` does it after each tick."""
        outcome = self.rig.controller.tick()
        policy = self.rig.policy
        self.retention.after_tick(policy.pool, policy.store.retention, self.rig.clock.now())
        return outcome

    def world_step(self, seconds: float = 15) -> None:
        """Between ticks: launched instances run and answer healthy, drains end; the clock moves."""
        rig = self.rig
        in_balancer = rig.balancer.backend_ids
        for instance in rig.provider.list_instances(POOL):
            if instance.state == CloudState.PENDING:
                rig.provider.set_state(instance.id, CloudState.RUNNING)
                rig.probe.health[instance.id] = True
                rig.probe.streams[instance.id] = 0
            elif instance.id not in in_balancer:
                rig.probe.streams[instance.id] = 0  # out of the balancer (draining): its streams end
        # Probe answers for instances that are gone would pile up in the fake: drop them.
        live = {i.id for i in rig.provider.list_instances(POOL)}
        for table in (rig.probe.health, rig.probe.streams):
            for gone in set(table) - live:
                del table[gone]
        rig.clock.advance(seconds)

    def forget_calls(self) -> None:
        """Drop the fakes' call logs (they record every call by design and would grow without end)."""
        provider, balancer = self.rig.provider, self.rig.balancer
        provider.forget_terminated()
        provider.launch_calls.clear()
        provider.terminate_calls.clear()
        provider.stop_calls.clear()
        provider.start_calls.clear()
        provider.list_calls.clear()
        balancer.apply_calls.clear()
        self.metrics.calls.clear()


def big_pool(
    nodes: int, *, store: Store | None = None, max_nodes: int | None = None, warm: bool = False
) -> BigPool:
    """A controller on fakes (``store``: the in-memory one unless given) with ``nodes`` serving nodes
    (and a warm pool of 2 when ``warm``)."""
    policy_text = POLICY_TEMPLATE.format(max_nodes=max_nodes or 2 * nodes) + (WARM_POOL if warm else "")
    rig = make_rig(policy_text=policy_text, store=store)
    now = rig.clock.now()
    backends = []
    for serial in range(1, nodes + 1):
        instance = Instance(
            id=f"seed-{serial:05d}",
            pool=POOL,
            instance_type="gpu",
            model_version="v2",
            launch_token="seed",
            launched_at=now - timedelta(hours=1),
            state=CloudState.RUNNING,
            address=f"10.{serial // 62500}.{serial // 250 % 250}.{serial % 250 + 1}",
            port=7860,
            image="img-v2",
        )
        rig.provider.add_instance(instance)
        rig.store.record_lifecycle(POOL, instance.id, Lifecycle.SERVING, now - timedelta(minutes=30))
        rig.probe.health[instance.id] = True
        rig.probe.streams[instance.id] = 5.0
        backends.append(Backend(address=instance.address or "", port=7860, instance_id=instance.id))
    rig.balancer.apply(backends)
    pool = BigPool(rig, Retention(rig.store))
    pool.set_load(nodes)
    return pool
