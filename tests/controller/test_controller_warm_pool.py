"""The controller's warm pool on recording fakes: preparation, warm starts, cold fallback, reuse, restarts."""

from __future__ import annotations

from dataclasses import replace

import pytest

from autoscaler.controller import Adapters, Controller
from autoscaler.domain import CloudState, Instance, Lifecycle
from autoscaler.errors import TransientProviderError
from autoscaler.policy.load import parse_policy
from autoscaler.testing.controller_rig import POLICY, STREAMS_QUERY, Rig, make_rig

WARM_POLICY = POLICY + """
warm_pool:
  size: 2
  start_timeout: 60s
"""


@pytest.fixture
def rig() -> Rig:
    """A controller on fakes whose policy keeps a warm pool of 2."""
    return make_rig(policy_text=WARM_POLICY)


def lifecycle(rig: Rig, instance_id: str) -> Lifecycle:
    """The lifecycle the store holds for an instance now."""
    return rig.store.lifecycles("unit")[instance_id][0]


def warm_ids(rig: Rig) -> list[str]:
    """Instances the store holds as STOPPED (the warm pool), in id order."""
    return sorted(i for i, (state, _) in rig.store.lifecycles("unit").items() if state == Lifecycle.STOPPED)


def tick(rig: Rig, load: float | None = None) -> None:
    """One tick at ``load`` streams per node, then pending instances run and every one is healthy."""
    if load is not None:
        rig.metrics.set(STREAMS_QUERY, load)
    outcome = rig.controller.tick()
    assert outcome.ok, outcome.errors
    rig.serve(*(i.id for i in rig.running()))
    rig.clock.advance(15)


def ready_pool(rig: Rig) -> tuple[str, list[str]]:
    """One serving node and a warm pool of two stopped instances; return their ids."""
    for _ in range(4):
        tick(rig, 0.0)
    [serving] = [b.instance_id for b in rig.balancer.current()]
    stopped = [i.id for i in rig.provider.list_instances("unit") if i.state == CloudState.STOPPED]
    assert len(stopped) == 2 and warm_ids(rig) == sorted(stopped)
    return serving, sorted(stopped)


def test_prepared_instances_are_stopped_once_healthy_and_never_join(rig: Rig) -> None:
    """The first tick launches the floor and prepares two (a -warm token); once healthy they are
    stopped, recorded PREPARING then STOPPED, and never reach the balancer."""
    rig.metrics.set(STREAMS_QUERY, 0.0)
    first = rig.controller.tick()
    assert len(first.launched) == 1 and len(first.prepared) == 2
    assert rig.provider.launch_calls[-1].client_token.endswith("-warm")
    rig.serve(*(i.id for i in rig.running()))
    rig.clock.advance(15)
    second = rig.controller.tick()
    assert sorted(second.stopped) == sorted(first.prepared)
    assert rig.provider.stop_calls == [tuple(first.prepared)]
    assert [b.instance_id for b in rig.balancer.current()] == first.launched
    for iid in first.prepared:
        assert [e["state"] for e in rig.store.events if e["instance_id"] == iid] == [
            Lifecycle.PREPARING, Lifecycle.STOPPED]
        assert rig.provider.get(iid).state == CloudState.STOPPED
    # Warm is not capacity: only the launched node counts (as booting on the tick it joins the
    # balancer, since the decision is taken before the join).
    assert second.decision is not None and second.decision.current == 1


def test_scale_out_starts_warm_first_then_launches_cold(rig: Rig) -> None:
    """Needing three more nodes with two warm: both start, one launches cold, two are prepared."""
    serving, warm = ready_pool(rig)
    launches = len(rig.provider.launch_calls)
    rig.metrics.set(STREAMS_QUERY, 28.0)  # 1 node × 28 / 7 → 4 nodes
    outcome = rig.controller.tick()
    assert sorted(outcome.started) == warm
    assert rig.provider.start_calls == [tuple(warm)]
    assert len(outcome.launched) == 1 and len(outcome.prepared) == 2
    service, refill = rig.provider.launch_calls[launches:]
    assert service.count == 1 and refill.count == 2 and refill.client_token.endswith("-warm")
    assert all(lifecycle(rig, iid) == Lifecycle.STARTING for iid in warm)
    assert outcome.decision is not None and outcome.decision.summary().startswith("out 1→4")
    rig.serve(*(i.id for i in rig.running()))
    rig.clock.advance(15)
    joined = rig.controller.tick().joined
    assert set(warm) <= set(joined)
    assert serving not in joined


@pytest.mark.parametrize("fault", ["no-stock", "throttled"])
def test_failed_start_falls_back_to_cold_in_the_same_tick(rig: Rig, fault: str) -> None:
    """A start refused for stock (InsufficientCapacity) or throttled beyond the budget launches cold
    for exactly the nodes it could not start, in the same tick; the warm instances stay warm."""
    _, warm = ready_pool(rig)
    if fault == "no-stock":
        rig.provider.start_stock = 0
    else:
        rig.provider.next_start_error = TransientProviderError("Throttling beyond the retry budget")
    launches = len(rig.provider.launch_calls)
    rig.metrics.set(STREAMS_QUERY, 21.0)  # → 3 nodes: 2 more
    outcome = rig.controller.tick()
    assert outcome.started == []
    assert len(outcome.launched) == 2, "one cold launch per failed start, nothing double-counted"
    assert rig.provider.launch_calls[launches].count == 2
    assert any("launching 2 cold instead" in n for n in outcome.notes)
    assert all(lifecycle(rig, iid) == Lifecycle.STOPPED for iid in warm)
    assert outcome.prepared == [], "the warm instances that did not start still fill the pool"


def test_a_start_that_fails_for_one_id_replaces_only_that_one(rig: Rig) -> None:
    """With stock for one of two warm starts, one starts and one cold launch replaces the other."""
    ready_pool(rig)
    rig.provider.start_stock = 1
    rig.metrics.set(STREAMS_QUERY, 21.0)
    outcome = rig.controller.tick()
    assert len(outcome.started) == 1 and len(outcome.launched) == 1


def test_vanished_warm_instance_is_dropped_and_replaced(rig: Rig) -> None:
    """A stopped instance that disappeared is recorded terminated and a new one is prepared."""
    _, warm = ready_pool(rig)
    rig.provider.set_state(warm[0], CloudState.TERMINATED)
    outcome = rig.controller.tick()
    assert lifecycle(rig, warm[0]) == Lifecycle.TERMINATED
    assert len(outcome.prepared) == 1


def test_vanished_at_start_time_falls_back_to_cold(rig: Rig) -> None:
    """A warm instance gone between the listing and the start (ALREADY_GONE) is replaced by a cold launch."""
    _, warm = ready_pool(rig)
    original = rig.provider.start

    def start_after_vanishing(ids: list[str]) -> dict[str, object]:
        rig.provider.set_state(warm[0], CloudState.TERMINATED)
        return dict(original(ids))

    rig.provider.start = start_after_vanishing  # type: ignore[method-assign,assignment]
    rig.metrics.set(STREAMS_QUERY, 21.0)
    outcome = rig.controller.tick()
    assert outcome.started == [warm[1]] and len(outcome.launched) == 1
    assert lifecycle(rig, warm[0]) == Lifecycle.TERMINATED


def test_scale_in_stops_a_drained_node_into_a_pool_below_size(rig: Rig) -> None:
    """With a warm pool one short, a drained victim is stopped into it instead of terminated."""
    ready_pool(rig)
    tick(rig, 21.0)  # both warm start, one launches cold, two are prepared (not yet healthy)
    for _ in range(3):
        tick(rig, 7.0)
    assert len(rig.balancer.current()) == 3 and len(warm_ids(rig)) == 2
    rig.provider.set_state(warm_ids(rig)[0], CloudState.TERMINATED)  # the pool is now one short
    rig.metrics.set(STREAMS_QUERY, 7.0 * 2 / 3)  # → 2 nodes: one victim
    drained = rig.controller.tick().drained
    assert len(drained) == 1
    rig.probe.streams[drained[0]] = 0
    rig.clock.advance(15)
    outcome = rig.controller.tick()
    assert drained[0] in outcome.stopped and drained[0] not in outcome.terminated
    assert lifecycle(rig, drained[0]) == Lifecycle.STOPPED
    assert rig.provider.get(drained[0]).state == CloudState.STOPPED
    assert drained[0] not in {b.instance_id for b in rig.balancer.current()}


def test_outdated_warm_instance_is_terminated_never_started(rig: Rig) -> None:
    """A stopped instance of an older model version is terminated and replaced, not started."""
    _, warm = ready_pool(rig)
    old = replace(rig.provider.get(warm[0]), id="fake-old", model_version="v1")
    rig.provider.add_instance(old)
    rig.metrics.set(STREAMS_QUERY, 14.0)  # → 2 nodes: one start
    outcome = rig.controller.tick()
    assert "fake-old" in outcome.terminated and "fake-old" not in outcome.started
    assert outcome.terminated["fake-old"].startswith("warm pool: discard warm fake-old: outdated model")
    assert len(outcome.started) == 1


def restarted(rig: Rig) -> Controller:
    """A new controller on the same store and provider, as after a crash and restart."""
    policy = parse_policy(WARM_POLICY.encode(), "unit.yaml")
    adapters = Adapters(provider=rig.provider, balancer=rig.balancer, metrics=rig.metrics, store=rig.store,
                        probe=rig.probe, clock=rig.clock)
    return Controller(lambda: policy, adapters)


def test_killed_between_recording_a_start_and_calling_it_converges(rig: Rig) -> None:
    """STARTING recorded but never called: the restarted controller re-issues the start once (it is
    idempotent), launches nothing for it and the node serves; the pool is refilled, nothing leaked."""
    _, warm = ready_pool(rig)
    rig.store.record_lifecycle("unit", warm[0], Lifecycle.STARTING, rig.clock.now(), {"reason": "crash test"})
    controller = restarted(rig)
    rig.metrics.set(STREAMS_QUERY, 14.0)  # → 2 nodes: the starting one is that second node
    outcome = controller.tick()
    assert rig.provider.start_calls[-1] == (warm[0],)
    assert outcome.launched == [] and outcome.started == []
    rig.serve(*(i.id for i in rig.running()))
    rig.clock.advance(15)
    rig.metrics.set(STREAMS_QUERY, 7.0)  # two nodes' load on two nodes
    outcome = controller.tick()
    assert warm[0] in outcome.joined
    assert len(rig.provider.start_calls) == 1
    for _ in range(3):
        rig.metrics.set(STREAMS_QUERY, 7.0)
        controller.tick()
        rig.serve(*(i.id for i in rig.running()))
        rig.clock.advance(15)
    live = [i for i in rig.provider.list_instances("unit")]
    assert sum(i.state == CloudState.STOPPED for i in live) == 2
    assert len(live) == 4  # two serving, two warm: nothing leaked


def test_killed_between_recording_a_stop_and_calling_it_converges(rig: Rig) -> None:
    """A prepared node recorded STOPPED whose stop was never sent is stopped by the next controller."""
    rig.metrics.set(STREAMS_QUERY, 0.0)
    first = rig.controller.tick()
    rig.serve(*(i.id for i in rig.running()))
    for iid in first.prepared:
        rig.store.record_lifecycle("unit", iid, Lifecycle.STOPPED, rig.clock.now(), {"reason": "crash test"})
    rig.clock.advance(15)
    restarted(rig).tick()
    assert sorted(rig.provider.stop_calls[-1]) == sorted(first.prepared)
    assert all(rig.provider.get(iid).state == CloudState.STOPPED for iid in first.prepared)
    assert len(rig.provider.list_instances("unit")) == 3


def test_unrecorded_stopped_instance_is_adopted_into_the_warm_pool(rig: Rig) -> None:
    """A stopped instance of the pool the store never heard of counts as warm: it is started for the
    floor instead of a cold launch."""
    rig.metrics.set(STREAMS_QUERY, 0.0)
    orphan = Instance(id="fake-orphan", pool="unit", instance_type="gpu", model_version="v2",
                      launch_token="unit-tick-9-warm", launched_at=rig.clock.now(), state=CloudState.STOPPED,
                      image="img-v2")
    rig.provider.add_instance(orphan)
    outcome = rig.controller.tick()
    assert outcome.decision is not None and outcome.decision.warm == 1
    assert outcome.started == ["fake-orphan"] and outcome.launched == []  # the floor of 1, served warm
    assert lifecycle(rig, "fake-orphan") == Lifecycle.STARTING


def test_warm_pool_is_exported_as_metrics(rig: Rig) -> None:
    """Nodes per lifecycle include preparing, stopped and starting; warm starts are counted by result
    and the warm pool's target is a gauge."""
    ready_pool(rig)
    registry = rig.controller.telemetry.registry
    assert registry.get_sample_value("autoscaler_nodes", {"pool": "unit", "lifecycle": "stopped"}) == 2
    assert registry.get_sample_value("autoscaler_warm_pool_target", {"pool": "unit"}) == 2
    rig.provider.start_stock = 1
    rig.metrics.set(STREAMS_QUERY, 21.0)
    rig.controller.tick()
    assert registry.get_sample_value("autoscaler_nodes", {"pool": "unit", "lifecycle": "starting"}) == 1
    for result in ("started", "no-capacity"):
        labels = {"pool": "unit", "result": result}
        assert registry.get_sample_value("autoscaler_warm_starts_total", labels) == 1


def test_preparation_backs_off_after_repeated_boot_failures(rig: Rig) -> None:
    """Warm instances that never become healthy count as boot failures: after two in a row the next
    preparations are held back like launches, so a broken image is not prepared (and billed) every tick."""
    rig.metrics.set(STREAMS_QUERY, 0.0)
    first = rig.controller.tick()  # the floor's node and two preparations; none ever becomes healthy
    assert len(first.prepared) == 2
    rig.running()
    rig.clock.advance(61)
    second = rig.controller.tick()  # three boot timeouts at once: everything held back
    assert len(second.terminated) == 3
    assert second.launched == [] and second.prepared == []
    assert second.decision is not None and second.decision.prepare == 0
    backoff = next(r for r in second.decision.reasons if r.name == "boot-backoff")
    assert "preparation of 2" in backoff.message
