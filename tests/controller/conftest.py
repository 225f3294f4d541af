"""Fixtures: a controller on the recording fakes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from controller_rig import POLICY, STREAMS_QUERY, FakeProbe, MovableClock, Rig

from autoscaler.balancers.fake import FakeBalancer
from autoscaler.controller import Adapters, Controller
from autoscaler.metrics.fake import FakeMetricsSource
from autoscaler.policy.load import parse_policy
from autoscaler.providers.fake import FakeProvider
from autoscaler.store import MemoryStore


@pytest.fixture
def rig() -> Rig:
    """A controller on fakes, with one policy and a movable clock."""
    clock = MovableClock()
    policy = parse_policy(POLICY.encode(), "unit.yaml")
    provider = FakeProvider(clock=clock)
    balancer, metrics, store, probe = FakeBalancer(), FakeMetricsSource(), MemoryStore(), FakeProbe()
    adapters = Adapters(provider=provider, balancer=balancer, metrics=metrics, store=store, probe=probe,
                        clock=clock)
    controller = Controller(lambda: policy, adapters)
    return Rig(controller, provider, balancer, metrics, store, probe, clock, policy)


@pytest.fixture
def serving_pool(rig: Rig) -> Callable[[int], list[str]]:
    """Bring the pool to ``n`` serving nodes through real ticks; return their ids."""

    def bring(n: int) -> list[str]:
        for _ in range(10):
            # A constant pool-wide load of n nodes' worth, spread over the nodes serving it.
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
