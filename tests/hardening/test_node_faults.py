"""Node faults: a node that flaps is not thrown out on one failed probe (the health section's grace
count); a node that dies leaves the balancer and is replaced."""

from __future__ import annotations

from collections.abc import Callable

from autoscaler.testing.controller_rig import STREAMS_QUERY, Rig


def test_one_failed_probe_keeps_a_serving_node_in_the_balancer(
    rig: Rig, serving_pool: Callable[[int], list[str]]
) -> None:
    """A node failing every other probe (one failure in a row, grace 2) never leaves the balancer."""
    ids = serving_pool(2)
    rig.metrics.set(STREAMS_QUERY, 7.0)
    for tick in range(8):
        rig.probe.health[ids[0]] = tick % 2 == 1  # flaps: down, up, down, up...
        rig.clock.advance(15)
        outcome = rig.controller.tick()
        assert sorted(b.instance_id for b in rig.balancer.current()) == ids, (tick, outcome.nodes)
        assert outcome.terminated == {} and outcome.launched == []


def test_a_dead_node_leaves_the_balancer_and_is_replaced(
    rig: Rig, serving_pool: Callable[[int], list[str]]
) -> None:
    """A node failing two probes in a row leaves the balancer at once, and once the boot timeout
    passes without it answering it is terminated and a replacement launched."""
    ids = serving_pool(2)
    dead = ids[0]
    rig.metrics.set(STREAMS_QUERY, 7.0)
    rig.probe.health[dead] = False
    rig.clock.advance(15)
    rig.controller.tick()
    assert dead in {b.instance_id for b in rig.balancer.current()}, "one failure is within the grace"
    rig.clock.advance(15)
    outcome = rig.controller.tick()
    assert [b.instance_id for b in rig.balancer.current()] == [ids[1]], outcome.nodes
    rig.metrics.set(STREAMS_QUERY, 14.0)  # the pool's load now falls on the one node left: 2 needed
    launched: list[str] = list(outcome.launched)
    for _ in range(6):  # the rig's boot timeout is 60 s
        rig.clock.advance(15)
        outcome = rig.controller.tick()
        launched += outcome.launched
        if dead in outcome.terminated:
            break
    assert dead in outcome.terminated and "boot timeout" in outcome.terminated[dead]
    rig.metrics.set(STREAMS_QUERY, 7.0)  # the replacement takes its share again
    rig.running()
    rig.serve(*(i.id for i in rig.provider.list_instances("unit") if i.id != dead))
    for _ in range(3):
        rig.clock.advance(15)
        launched += rig.controller.tick().launched
    assert len(launched) == 1, launched
    assert {b.instance_id for b in rig.balancer.current()} == {ids[1], launched[0]}


def test_a_node_that_never_becomes_healthy_is_terminated_at_the_boot_timeout_and_replaced(
    rig: Rig, serving_pool: Callable[[int], list[str]]
) -> None:
    """A launched node that never answers its health check never joins the balancer, is terminated
    once the boot timeout (60 s) has passed, and one replacement is launched, which joins."""
    ids = serving_pool(1)
    rig.metrics.set(STREAMS_QUERY, 14.0)  # two nodes' worth: one launch
    rig.clock.advance(15)
    outcome = rig.controller.tick()
    assert len(outcome.launched) == 1
    stuck = outcome.launched[0]
    rig.running()  # it runs, but its health check never passes (the probe's default)
    terminated_after = None
    launched: list[str] = []
    for tick in range(1, 7):
        rig.clock.advance(15)
        outcome = rig.controller.tick()
        assert stuck not in {b.instance_id for b in rig.balancer.current()}
        launched += outcome.launched
        if stuck in outcome.terminated:
            terminated_after = tick * 15
            assert "boot timeout" in outcome.terminated[stuck]
            break
    # The timeout runs from the launch (the BOOTING record carries the launch time), so the node
    # goes on the first tick past 60 s after its launch: 75 s here, not a tick later.
    assert terminated_after == 75, terminated_after
    rig.metrics.set(STREAMS_QUERY, 7.0)  # the replacement takes its share: two nodes at target
    for _ in range(3):
        rig.clock.advance(15)
        launched += rig.controller.tick().launched
        rig.serve(*(i.id for i in rig.running() if i.id != stuck))
    assert len(launched) == 1, launched
    rig.clock.advance(15)
    rig.controller.tick()
    assert {b.instance_id for b in rig.balancer.current()} == {ids[0], launched[0]}
