"""A controller on a real cloud SDK (boto3 against moto, the Alibaba SDK against the local ECS endpoint),
with fakes for everything else and a clock the test moves: the rig of the cloud fault tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from autoscaler.balancers.fake import FakeBalancer
from autoscaler.controller import Adapters, Controller, TickOutcome
from autoscaler.metrics.fake import FakeMetricsSource
from autoscaler.policy.load import parse_policy
from autoscaler.policy.model import PoolPolicy
from autoscaler.protocols import Provider
from autoscaler.store import MemoryStore
from autoscaler.testing.controller_rig import STREAMS_QUERY, FakeProbe

#: The scaling half of every cloud fault test's policy; ``{provider}`` and ``{types}`` are filled in.
POLICY_TEMPLATE = """
pool: faults
provider: {provider}
launch:
  model_version: fun-asr-nano-2512
  image: {{id: {image}}}
  instance_types: [{types}]
balancer: {{kind: none}}
health: {{boot_timeout: 60s}}
drain: {{timeout: 300s}}
scaling:
  min_nodes: {min_nodes}
  max_nodes: {max_nodes}
  checks:
    - {{name: streams, type: target_tracking, query: streams_per_node, target: 7}}
  behavior:
    scale_in: {{stabilization: 0s}}
    max_launching: 10
  on_missing_data: {{after_ticks: 2, action: hold}}
"""


class RealTimeClock:
    """Wall-clock time the test moves forward by whole ticks (the cloud's launch times are real)."""

    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def now(self) -> datetime:
        """The current test instant."""
        return self.at

    def advance(self, seconds: float) -> None:
        """Move forward."""
        self.at = max(self.at + timedelta(seconds=seconds), datetime.now(UTC))


@dataclass
class CloudRig:
    """A controller on a real provider; the policy can be swapped between ticks."""

    provider: Provider
    policy_for: Callable[[int, int], PoolPolicy]
    min_nodes: int = 0
    max_nodes: int = 6
    clock: RealTimeClock = field(default_factory=RealTimeClock)
    balancer: FakeBalancer = field(default_factory=FakeBalancer)
    metrics: FakeMetricsSource = field(default_factory=FakeMetricsSource)
    probe: FakeProbe = field(default_factory=FakeProbe)
    store: MemoryStore = field(default_factory=MemoryStore)
    outcomes: list[TickOutcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        adapters = Adapters(provider=self.provider, balancer=self.balancer, metrics=self.metrics,
                            store=self.store, probe=self.probe, clock=self.clock)
        self.controller = Controller(lambda: self.policy_for(self.min_nodes, self.max_nodes), adapters)

    def tick(self, streams_per_node: float = 7.0) -> TickOutcome:
        """One tick 15 s after the last. Every node the controller saw answers its health check (with
        no streams) from the next tick on: the instances boot in one tick. The rig reads no
        inventory itself, so the injected faults hit the controller's calls only."""
        self.clock.advance(15)
        self.metrics.set(STREAMS_QUERY, streams_per_node, observed_at=self.clock.now())
        outcome = self.controller.tick()
        self.outcomes.append(outcome)
        for instance_id in outcome.nodes:
            self.probe.health[instance_id] = True
            self.probe.streams.setdefault(instance_id, 0.0)
        return outcome

    def serving(self) -> set[str]:
        """Ids in the balancer."""
        return {b.instance_id for b in self.balancer.current()}


def make_policy(provider_yaml: str, image: str, types: str) -> Callable[[int, int], PoolPolicy]:
    """A policy factory for ``(min_nodes, max_nodes)`` with this provider section."""
    cache: dict[tuple[int, int], PoolPolicy] = {}

    def policy(min_nodes: int, max_nodes: int) -> PoolPolicy:
        if (min_nodes, max_nodes) not in cache:
            text = POLICY_TEMPLATE.format(provider=provider_yaml, image=image, types=types,
                                          min_nodes=min_nodes, max_nodes=max_nodes)
            cache[(min_nodes, max_nodes)] = parse_policy(text.encode(), "faults.yaml")
        return cache[(min_nodes, max_nodes)]

    return policy
