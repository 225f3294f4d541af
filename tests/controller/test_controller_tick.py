"""The controller's tick on recording fakes: what it launches, admits, drains and terminates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from autoscaler.controller import Controller
from autoscaler.domain import CloudState, Instance, IntentKind, Lifecycle
from autoscaler.errors import BalancerError, TransientProviderError
from autoscaler.policy.load import PolicyWatcher
from autoscaler.testing.controller_rig import POLICY, STREAMS_QUERY, Rig


def test_first_tick_launches_min_with_token_from_recorded_tick(rig: Rig) -> None:
    """An empty pool launches min nodes, with a client token naming the recorded tick."""
    rig.metrics.set(STREAMS_QUERY, 0.0)
    outcome = rig.controller.tick()
    assert outcome.ok, outcome.errors
    assert len(outcome.launched) == 1
    call = rig.provider.launch_calls[0]
    assert call.client_token == f"unit-tick-{outcome.tick_id}"
    assert call.spec.image == "img-v2" and call.spec.model_version == "v2"
    assert rig.store.ticks[0]["decision"]["outcome"]["launched"] == outcome.launched


def test_node_joins_balancer_only_after_health_check(rig: Rig) -> None:
    """A booting node stays out of the balancer until its own health check passes."""
    rig.metrics.set(STREAMS_QUERY, 0.0)
    rig.controller.tick()
    (node,) = rig.running()
    rig.clock.advance(15)
    outcome = rig.controller.tick()
    assert rig.balancer.current() == [] and outcome.nodes == {node.id: "booting"}
    rig.serve(node.id)
    rig.clock.advance(15)
    outcome = rig.controller.tick()
    assert [b.instance_id for b in rig.balancer.current()] == [node.id]
    assert rig.balancer.current()[0].weight == 3  # the instance type's weight
    assert outcome.joined == [node.id]
    states = [e["state"] for e in rig.store.events if e["instance_id"] == node.id]
    assert states == [Lifecycle.LAUNCHING, Lifecycle.BOOTING, Lifecycle.SERVING]


def test_booting_capacity_is_not_launched_twice(rig: Rig, serving_pool: Callable[[int], list[str]]) -> None:
    """While launched nodes boot, the same demand launches nothing more."""
    serving_pool(1)
    rig.metrics.set(STREAMS_QUERY, 20.0)  # 1 node × 20 / 7 → 3 nodes
    first = rig.controller.tick()
    assert len(first.launched) == 2
    rig.running()
    rig.clock.advance(15)
    second = rig.controller.tick()
    assert second.launched == [] and len(rig.provider.launch_calls) == 2


def test_scale_in_drains_before_terminating(rig: Rig, serving_pool: Callable[[int], list[str]]) -> None:
    """A victim leaves the balancer first, and is terminated only once its streams have finished."""
    ids = serving_pool(2)
    rig.probe.streams.update({ids[0]: 3, ids[1]: 1})
    rig.metrics.set(STREAMS_QUERY, 2.0)
    outcome = rig.controller.tick()
    assert outcome.drained == [ids[1]], "the node with the fewest streams is the victim"
    assert [b.instance_id for b in rig.balancer.current()] == [ids[0]]
    assert outcome.terminated == {}
    rig.clock.advance(15)
    outcome = rig.controller.tick()
    assert outcome.terminated == {}, "a stream is still in flight on the victim"
    rig.probe.streams[ids[1]] = 0
    rig.clock.advance(15)
    outcome = rig.controller.tick()
    assert list(outcome.terminated) == [ids[1]]
    assert rig.provider.terminate_calls[-1] == (ids[1],)
    assert rig.store.lifecycles("unit")[ids[1]][0] == Lifecycle.TERMINATED


def test_drain_timeout_terminates_a_node_still_busy(
    rig: Rig, serving_pool: Callable[[int], list[str]]
) -> None:
    """A victim whose streams never finish is terminated when the drain timeout passes."""
    ids = serving_pool(2)
    rig.probe.streams.update({ids[0]: 3, ids[1]: 1})
    rig.metrics.set(STREAMS_QUERY, 2.0)
    rig.controller.tick()
    rig.clock.advance(299)
    assert rig.controller.tick().terminated == {}
    rig.clock.advance(2)
    outcome = rig.controller.tick()
    assert ids[1] in outcome.terminated and "drain timeout" in outcome.terminated[ids[1]]


def test_balancer_rejection_terminates_nothing(rig: Rig, serving_pool: Callable[[int], list[str]]) -> None:
    """When the balancer rejects a change, draining nodes are kept and the error is reported."""
    ids = serving_pool(2)
    rig.probe.streams.update({ids[0]: 3, ids[1]: 0})
    rig.metrics.set(STREAMS_QUERY, 2.0)
    rig.controller.tick()
    rig.clock.advance(15)
    rig.balancer.next_apply_error = BalancerError("nginx -t failed")
    outcome = rig.controller.tick()
    assert outcome.terminated == {}
    assert any("balancer rejected" in e for e in outcome.errors)
    rig.clock.advance(15)
    assert ids[1] in rig.controller.tick().terminated


def test_missing_metrics_never_remove_capacity(rig: Rig, serving_pool: Callable[[int], list[str]]) -> None:
    """Ticks with no data (past the fallback threshold) drain nothing, even at min load elsewhere."""
    serving_pool(3)
    rig.metrics.set_missing(STREAMS_QUERY, "prometheus unreachable")
    for _ in range(6):
        rig.clock.advance(15)
        outcome = rig.controller.tick()
        assert outcome.drained == [] and outcome.terminated == {}
    assert len(rig.balancer.current()) == 3


def test_boot_timeout_replaces_the_node(rig: Rig) -> None:
    """A node not healthy within the boot timeout is terminated, and its capacity relaunched."""
    rig.metrics.set(STREAMS_QUERY, 0.0)
    rig.controller.tick()
    (node,) = rig.running()
    rig.clock.advance(61)
    outcome = rig.controller.tick()
    assert node.id in outcome.terminated and "boot timeout" in outcome.terminated[node.id]
    assert len(outcome.launched) == 1 and outcome.launched != [node.id]


def test_node_of_another_model_version_never_joins(rig: Rig) -> None:
    """A healthy node tagged with another model version is replaced, never admitted."""
    stray = Instance(
        id="i-stray",
        pool="unit",
        instance_type="gpu",
        model_version="v1",
        launch_token="old",
        launched_at=rig.clock.now(),
        state=CloudState.RUNNING,
        address="10.0.0.9",
    )
    rig.provider.add_instance(stray)
    rig.serve("i-stray")
    rig.metrics.set(STREAMS_QUERY, 0.0)
    outcome = rig.controller.tick()
    assert "i-stray" in outcome.terminated and "model version" in outcome.terminated["i-stray"]
    assert all(b.instance_id != "i-stray" for b in rig.balancer.current())


def test_provider_failure_is_an_error_not_a_crash(rig: Rig) -> None:
    """A provider error ends the tick with a reported error and no action; the next tick works."""
    rig.metrics.set(STREAMS_QUERY, 0.0)
    rig.provider.next_list_error = TransientProviderError("Throttling")
    outcome = rig.controller.tick()
    assert not outcome.ok and "Throttling" in outcome.errors[0]
    assert rig.provider.launch_calls == []
    assert rig.controller.tick().ok


def test_engine_memory_survives_a_controller_restart(
    rig: Rig, serving_pool: Callable[[int], list[str]]
) -> None:
    """The engine memory is stored with each tick and handed back on the next one."""
    serving_pool(2)
    saved = rig.store.load_memory("unit")
    assert saved is not None and saved["recommendations"], saved


def test_explain_changes_nothing(rig: Rig) -> None:
    """explain observes and decides without launching, recording or touching the balancer."""
    rig.metrics.set(STREAMS_QUERY, 0.0)
    _policy, _observation, decision = rig.controller.explain()
    assert decision.launch == 1
    assert rig.provider.launch_calls == [] and rig.store.ticks == [] and rig.balancer.apply_calls == []


def test_repeated_boot_failures_back_off_launches(rig: Rig) -> None:
    """After two nodes in a row fail to boot, launches pause (doubling) and the reason says why."""
    rig.metrics.set(STREAMS_QUERY, 0.0)
    rig.controller.tick()  # launches the first node, which never becomes healthy
    rig.running()
    rig.clock.advance(61)
    first = rig.controller.tick()  # boot timeout: replaced, relaunched (one failure is no pattern)
    assert len(first.terminated) == 1 and len(first.launched) == 1
    rig.running()
    rig.clock.advance(61)
    second = rig.controller.tick()  # second failure in a row: replaced, relaunch held back
    assert len(second.terminated) == 1 and second.launched == []
    assert second.decision is not None and second.decision.launch == 0
    backoff = [r for r in second.decision.reasons if r.name == "boot-backoff"]
    assert backoff and "2 nodes in a row failed to boot" in backoff[0].message
    rig.clock.advance(15)
    assert rig.controller.tick().launched == []  # still inside 2 × 15 s
    rig.clock.advance(16)
    retry = rig.controller.tick()
    assert len(retry.launched) == 1  # the backoff ran out: try again
    rig.running()
    rig.serve(*retry.launched)
    rig.clock.advance(15)
    joined = rig.controller.tick()
    assert joined.joined == retry.launched
    assert rig.controller.boot_failures("unit") == (0, None)  # a node booted: the streak is over


def test_invalid_policy_edit_keeps_last_valid_policy(rig: Rig, tmp_path: Path) -> None:
    """A policy file edited into an invalid state: ticks go on with the last valid policy, and the
    outcome and the `autoscaler_policy_valid` gauge say so until the file is fixed."""
    path = tmp_path / "unit.yaml"
    path.write_text(POLICY)
    watcher = PolicyWatcher(path)
    controller = Controller(
        watcher.current,
        rig.controller.adapters,
        policy_error=lambda: str(watcher.last_error) if watcher.last_error else None,
    )
    rig.metrics.set(STREAMS_QUERY, 0.0)
    assert controller.tick().ok
    path.write_text(POLICY.replace("max_nodes: 5", "max_nodes: 0"))
    outcome = controller.tick()
    assert outcome.ok and outcome.decision is not None
    assert any("keeping the last valid policy" in note for note in outcome.notes)
    gauge = controller.telemetry.registry.get_sample_value("autoscaler_policy_valid", {"pool": "unit"})
    assert gauge == 0
    path.write_text(POLICY.replace("max_nodes: 5", "max_nodes: 4"))
    assert controller.tick().notes == []
    assert controller.telemetry.registry.get_sample_value("autoscaler_policy_valid", {"pool": "unit"}) == 1


def test_a_restarted_controller_restarts_the_drain_of_a_node_still_busy(
    rig: Rig, serving_pool: Callable[[int], list[str]]
) -> None:
    """A node recorded draining before a crash mid-apply (its balancer intent left open: a killed
    predecessor may have left it in nginx) gets a whole drain timeout from the new process's first
    balancer apply, not from the old record."""
    ids = serving_pool(2)
    rig.probe.streams.update({ids[0]: 3, ids[1]: 1})
    rig.metrics.set(STREAMS_QUERY, 2.0)
    assert rig.controller.tick().drained == [ids[1]]
    # The predecessor dies while applying a list: written, never confirmed.
    rig.store.open_intent("unit", IntentKind.BALANCER, rig.clock.now(), instance_ids=(ids[0],))
    rig.clock.advance(301)  # past the 300 s drain timeout while no controller ran
    restarted = Controller(lambda: rig.policy, rig.controller.adapters)
    outcome = restarted.tick()
    assert outcome.terminated == {} and ids[1] not in [b.instance_id for b in rig.balancer.current()]
    assert any(ids[1] in note for note in outcome.notes)
    rig.clock.advance(299)
    assert restarted.tick().terminated == {}
    rig.clock.advance(2)
    assert "drain timeout" in restarted.tick().terminated[ids[1]]


def test_a_new_process_after_a_completed_apply_finishes_drains_as_recorded(
    rig: Rig, serving_pool: Callable[[int], list[str]]
) -> None:
    """Each `once` is a new process: when the previous apply completed, a drained node (no stream in
    flight) is terminated on the next run, and a drain timeout runs from the recorded drain."""
    ids = serving_pool(3)
    rig.probe.streams.update({ids[0]: 3, ids[1]: 0, ids[2]: 1})
    rig.metrics.set(STREAMS_QUERY, 1.0)
    drained = rig.controller.tick().drained
    assert set(drained) == {ids[1], ids[2]}
    rig.clock.advance(15)
    outcome = Controller(lambda: rig.policy, rig.controller.adapters).tick()
    assert set(outcome.terminated) == {ids[1]}
    assert outcome.terminated[ids[1]].startswith("drained")
    rig.clock.advance(300)
    outcome = Controller(lambda: rig.policy, rig.controller.adapters).tick()
    assert "drain timeout" in outcome.terminated[ids[2]]
