"""The executor's intent log, its fence, and the reconcile of intents a crash left open (recording fakes)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from autoscaler.controller import Adapters, Controller, launch_spec
from autoscaler.domain import (
    CloudState,
    IntentKind,
    IntentStatus,
    LaunchResult,
    LaunchSpec,
    Lifecycle,
    TerminateOutcome,
)
from autoscaler.errors import LeadershipLost, QuotaExceeded, StoreError, TransientProviderError
from autoscaler.executor import WorldExecutor
from autoscaler.providers.fake import FakeProvider
from autoscaler.store import MemoryStore
from autoscaler.testing.controller_rig import POLICY, STREAMS_QUERY, Rig, make_rig


class LateLeader:
    """A leadership whose ``still_leader`` answers from a list (then True), counting the checks."""

    def __init__(self, answers: Sequence[bool] = ()) -> None:
        self.answers = list(answers)
        self.checks = 0

    def may_act(self) -> bool:
        """Always leads at the start of a tick."""
        return True

    def still_leader(self) -> bool:
        """The next scripted answer."""
        self.checks += 1
        return self.answers.pop(0) if self.answers else True

    def close(self) -> None:
        """Nothing to release."""


class WitnessProvider(FakeProvider):
    """A fake provider that notes, at each launch and terminate, which intents were open."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__()
        self.store = store
        self.open_at_call: list[list[IntentKind]] = []

    def launch(self, spec: LaunchSpec, count: int, client_token: str) -> LaunchResult:
        """Note the open intents, then launch."""
        self.open_at_call.append([i.kind for i in self.store.intents(spec.pool, open_only=True)])
        return super().launch(spec, count, client_token)

    def terminate(self, instance_ids: Sequence[str]) -> dict[str, TerminateOutcome]:
        """Note the open intents (of pool ``unit``), then terminate."""
        self.open_at_call.append([i.kind for i in self.store.intents("unit", open_only=True)])
        return super().terminate(instance_ids)


def _executor(
    store: MemoryStore, provider: FakeProvider, rig: Rig, leader: LateLeader | None = None
) -> WorldExecutor:
    return WorldExecutor(provider, rig.balancer, store, rig.clock, leader)


def test_intent_is_open_during_the_call_and_completed_after(rig: Rig) -> None:
    """A launch's intent (pool, kind, token, tick, created_at) is in the store while the provider is called,
    and completed ok with the instances the provider returned."""
    store = MemoryStore()
    provider = WitnessProvider(store)
    executor = _executor(store, provider, rig)
    result = executor.launch("unit", launch_spec(rig.policy), 2, "unit-tick-9", tick_id=9)
    assert provider.open_at_call == [[IntentKind.LAUNCH]]
    (intent,) = store.intents("unit")
    assert (intent.kind, intent.token, intent.count) == (IntentKind.LAUNCH, "unit-tick-9", 2)
    assert intent.tick_id == 9
    assert intent.created_at == rig.clock.now() and intent.status == IntentStatus.OK
    assert intent.result["instances"] == [i.id for i in result.instances]


def test_failed_call_completes_its_intent_with_the_error(rig: Rig) -> None:
    """A provider error closes the intent as failed with the error, and is re-raised unchanged."""
    store = MemoryStore()
    rig.provider.next_launch_error = QuotaExceeded("vCPU quota")
    with pytest.raises(QuotaExceeded):
        _executor(store, rig.provider, rig).launch("unit", launch_spec(rig.policy), 1, "t", tick_id=1)
    (intent,) = store.intents("unit")
    assert intent.status == IntentStatus.FAILED and "QuotaExceeded: vCPU quota" in (intent.error or "")


def test_store_that_cannot_record_the_intent_means_no_call(rig: Rig) -> None:
    """When the intent cannot be written (StoreError) the provider is not called at all."""
    store = MemoryStore()
    store.next_error = OSError("disk full")
    with pytest.raises(StoreError):
        _executor(store, rig.provider, rig).terminate("unit", ["i-1"], tick_id=1, reason="x")
    assert rig.provider.terminate_calls == [] and store.intents("unit") == []


def test_fence_stops_before_the_call_and_records_nothing(rig: Rig) -> None:
    """A leader check that fails raises LeadershipLost: no intent, no provider call."""
    store = MemoryStore()
    with pytest.raises(LeadershipLost):
        _executor(store, rig.provider, rig, LateLeader([False])).launch(
            "unit", launch_spec(rig.policy), 1, "t", tick_id=1
        )
    assert rig.provider.launch_calls == [] and store.intents("unit") == []


def test_controller_that_loses_leadership_mid_tick_stops_with_a_clear_error(rig: Rig) -> None:
    """Leadership lost after the tick was recorded (the executor's check fails): nothing launched, and
    the tick's error says why."""
    leader = LateLeader([True, False])  # the controller's pre-record check passes; the executor's fails
    controller = Controller(lambda: rig.policy, rig.controller.adapters, leadership=leader)
    rig.metrics.set(STREAMS_QUERY, 0.0)
    outcome = controller.tick()
    assert rig.provider.launch_calls == []
    lost = "LeadershipLost: lost the pool's leader lock before a launch"
    assert any(e.startswith(lost) for e in outcome.errors)


def _crash_after_launch(rig: Rig) -> str:
    """Tick once with a store that accepts the launch's intent but fails to complete it (the
    controller "dies" between the provider call and its record); return the launch token."""
    rig.metrics.set(STREAMS_QUERY, 0.0)
    store: MemoryStore = rig.store
    original = store.close_intent

    def fail_once(*args: object, **kwargs: object) -> None:
        store.close_intent = original  # type: ignore[method-assign]
        raise StoreError("killed before the result was recorded")

    store.close_intent = fail_once  # type: ignore[method-assign]
    outcome = rig.controller.tick()
    assert any("killed before" in e for e in outcome.errors)
    (intent,) = store.intents("unit", open_only=True)
    assert intent.kind == IntentKind.LAUNCH and intent.token is not None
    return intent.token


def _restarted(rig: Rig) -> Controller:
    """A new controller process on the same store, provider and balancer."""
    adapters: Adapters = rig.controller.adapters
    return Controller(lambda: rig.policy, adapters)


def test_restart_after_a_crash_mid_launch_finds_the_instance_by_its_token(rig: Rig) -> None:
    """The launched instance was never recorded; the restarted controller finds it by the open intent's
    token, records it, settles the intent with a reason, and launches nothing more (min 1)."""
    token = _crash_after_launch(rig)
    assert rig.store.lifecycles("unit") == {}
    outcome = _restarted(rig).tick()
    assert outcome.ok, outcome.errors
    assert len(rig.provider.launch_calls) == 1 and len(rig.provider.list_instances("unit")) == 1
    (iid,) = [i.id for i in rig.provider.list_instances("unit")]
    assert rig.store.lifecycles("unit")[iid][0] in (Lifecycle.LAUNCHING, Lifecycle.BOOTING)
    (settled,) = [i for i in rig.store.intents("unit") if i.status == IntentStatus.RECONCILED]
    assert settled.token == token and "1 of 1 found by their launch token" in settled.result["reason"]
    assert any(n.startswith(f"reconciled intent {settled.id}: launch {token}") for n in outcome.notes)


def test_launch_found_short_is_retried_under_the_same_token(rig: Rig) -> None:
    """An open launch whose instances are not (yet) listed: the restarted controller's launch re-uses the
    intent's token, so the provider's client-token idempotency protects it."""
    rig.metrics.set(STREAMS_QUERY, 0.0)
    rig.store.open_intent(
        "unit", IntentKind.LAUNCH, rig.clock.now(), tick_id=41, token="unit-tick-41", count=1
    )
    outcome = _restarted(rig).tick()
    assert outcome.ok, outcome.errors
    assert [c.client_token for c in rig.provider.launch_calls] == ["unit-tick-41"]
    assert rig.provider.launch_calls[0].count == 1
    # And only that first tick: the next launch gets its own tick's token.
    assert rig.store.intents("unit", open_only=True) == []


def test_open_terminate_is_reissued_and_recorded(rig: Rig) -> None:
    """An open terminate whose instance still runs is re-issued on restart and the node recorded
    terminated; one already gone is just closed."""
    result = rig.provider.launch(launch_spec(rig.policy), 1, "manual")
    (instance,) = result.instances
    rig.provider.set_state(instance.id, CloudState.RUNNING)
    rig.store.record_lifecycle("unit", instance.id, Lifecycle.DRAINING, rig.clock.now())
    rig.store.open_intent("unit", IntentKind.TERMINATE, rig.clock.now(), instance_ids=(instance.id, "i-gone"))
    rig.metrics.set(STREAMS_QUERY, 0.0)
    outcome = _restarted(rig).tick()
    assert rig.provider.terminate_calls[0] == (instance.id,)
    assert rig.store.lifecycles("unit")[instance.id][0] == Lifecycle.TERMINATED
    note = next(n for n in outcome.notes if n.startswith("reconciled intent 1"))
    assert "i-gone already gone" in note and f"terminate of {instance.id} re-issued" in note


def test_open_balancer_change_is_closed_by_the_first_apply(rig: Rig) -> None:
    """An open balancer intent (a crash between writing the list and recording it) is closed by the
    restarted controller's first apply, which puts the whole list in force."""
    rig.store.open_intent("unit", IntentKind.BALANCER, rig.clock.now(), instance_ids=("i-old",))
    rig.metrics.set(STREAMS_QUERY, 0.0)
    _restarted(rig).tick()
    kinds = {(i.kind, i.status) for i in rig.store.intents("unit")}
    assert (IntentKind.BALANCER, IntentStatus.RECONCILED) in kinds
    assert (IntentKind.BALANCER, IntentStatus.OK) in kinds  # the first apply, recorded as its own intent
    assert rig.store.intents("unit", open_only=True) == []


def test_every_world_change_of_a_scale_out_and_in_has_a_completed_intent(rig: Rig) -> None:
    """Launch, join and terminate of a scale-out then scale-in each leave one ok intent, none stays open,
    and each tick's recorded plan names the same provider changes its intents record."""
    rig.metrics.set(STREAMS_QUERY, 14.0)
    for _ in range(4):
        rig.controller.tick()
        rig.serve(*(i.id for i in rig.running()))
        rig.clock.advance(15)
    rig.metrics.set(STREAMS_QUERY, 0.0)
    for _ in range(4):
        rig.controller.tick()
        rig.clock.advance(400)
    _assert_plans_match_intents(rig)
    kinds = [i.kind for i in rig.store.intents("unit") if i.status == IntentStatus.OK]
    assert {IntentKind.LAUNCH, IntentKind.BALANCER, IntentKind.TERMINATE} <= set(kinds)
    assert rig.store.intents("unit", open_only=True) == []
    assert len([c for c in rig.provider.terminate_calls]) == kinds.count(IntentKind.TERMINATE)


def _assert_plans_match_intents(rig: Rig) -> None:
    """Each tick's recorded plan names exactly the provider changes its intents record."""
    for tick in rig.store.recent_ticks("unit", limit=None):
        planned = sorted(
            (step["kind"], step["count"] if step["kind"] == "launch" else tuple(step["ids"]))
            for step in tick["decision"]["plan"] if step["kind"] != "balancer"
        )
        done = sorted(
            (i.kind.value, i.count if i.kind == IntentKind.LAUNCH else i.instance_ids)
            for i in rig.store.intents("unit", tick_id=tick["id"]) if i.kind != IntentKind.BALANCER
        )
        assert planned == done, tick["decision"]["summary"]


def test_warm_pool_plans_match_what_was_done() -> None:
    """With a warm pool (prepare, stop, warm start, cold launch, drain into the pool) every tick's
    plan names the same stops, starts, launches and terminates its intents record."""
    rig = make_rig(policy_text=POLICY + "\nwarm_pool:\n  size: 2\n  start_timeout: 60s\n")

    def tick(load: float) -> None:
        rig.metrics.set(STREAMS_QUERY, load)
        outcome = rig.controller.tick()
        assert outcome.ok, outcome.errors
        rig.serve(*(i.id for i in rig.running()))
        rig.clock.advance(15)

    for load in (0.0, 0.0, 0.0, 0.0, 21.0, 7.0, 7.0, 7.0):
        tick(load)
    stopped = [i.id for i in rig.provider.list_instances("unit") if i.state == CloudState.STOPPED]
    rig.provider.set_state(stopped[0], CloudState.TERMINATED)  # the pool one short: a drain refills it
    for load in (7.0 * 2 / 3, 7.0 * 2 / 3, 7.0 * 2 / 3):
        tick(load)
    kinds = {i.kind for i in rig.store.intents("unit")}
    assert {IntentKind.LAUNCH, IntentKind.STOP, IntentKind.START} <= kinds
    _assert_plans_match_intents(rig)


def test_a_reissue_the_provider_refuses_does_not_block_the_tick(rig: Rig) -> None:
    """An open terminate whose re-issue fails (throttled) is closed as failed with the error, and the
    tick goes on (it launches the pool's floor)."""
    result = rig.provider.launch(launch_spec(rig.policy), 1, "manual")
    (instance,) = result.instances
    rig.provider.set_state(instance.id, CloudState.RUNNING)
    rig.store.record_lifecycle("unit", instance.id, Lifecycle.DRAINING, rig.clock.now())
    rig.store.open_intent("unit", IntentKind.TERMINATE, rig.clock.now(), instance_ids=(instance.id,))
    rig.provider.next_terminate_error = TransientProviderError("throttled")
    rig.metrics.set(STREAMS_QUERY, 0.0)
    outcome = _restarted(rig).tick()
    assert outcome.ok, outcome.errors
    first = rig.store.intents("unit")[0]
    assert first.status == IntentStatus.FAILED and "TransientProviderError: throttled" in (first.error or "")
    assert any("re-issue failed" in n for n in outcome.notes)
    assert len(outcome.launched) == 1
