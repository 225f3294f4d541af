"""The contract every ``Store`` passes (see ``autoscaler.protocols.Store``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from autoscaler.domain import IntentKind, IntentStatus, Lifecycle
from autoscaler.errors import StoreError
from autoscaler.protocols import Store

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


class StoreContract:
    """Subclass with a ``store`` fixture giving an empty store."""

    def test_empty_pool_reads_empty(self, store: Store) -> None:
        """A pool with no history has no memory, no lifecycles and no ticks."""
        assert store.load_memory("nobody") is None
        assert store.lifecycles("nobody") == {}
        assert store.recent_ticks("nobody") == []

    def test_tick_round_trips_with_memory(self, store: Store) -> None:
        """A recorded tick comes back with its inputs and decision; its memory is the pool's memory."""
        tick_id = store.record_tick(
            "p",
            T0,
            {"samples": {"q": {"value": 3.5}}},
            {
                "direction": "out",
                "desired": 4,
                "summary": "out 3→4",
                "reasons": [{"kind": "final", "name": "x", "message": "m", "detail": {}}],
            },
            {"missing_ticks": 2},
        )
        ticks = store.recent_ticks("p")
        assert ticks[0]["id"] == tick_id
        assert ticks[0]["inputs"]["samples"]["q"]["value"] == 3.5
        assert ticks[0]["decision"]["reasons"][0]["kind"] == "final"
        assert store.load_memory("p") == {"missing_ticks": 2}

    def test_newest_tick_first_and_limit(self, store: Store) -> None:
        """recent_ticks lists newest first and honours the limit; pools do not mix."""
        for i in range(5):
            store.record_tick("p", T0 + timedelta(seconds=15 * i), {}, {"desired": i}, {"n": i})
        store.record_tick("other", T0, {}, {"desired": 99}, {"n": 99})
        ticks = store.recent_ticks("p", limit=3)
        assert [t["decision"]["desired"] for t in ticks] == [4, 3, 2]
        assert store.load_memory("p") == {"n": 4}

    def test_ticks_since_a_time(self, store: Store) -> None:
        """recent_ticks(since=...) keeps only ticks at or after it; limit=None returns them all."""
        for i in range(6):
            store.record_tick("p", T0 + timedelta(minutes=30 * i), {}, {"desired": i}, {})
        since = T0 + timedelta(minutes=60)
        assert [t["decision"]["desired"] for t in store.recent_ticks("p", None, since=since)] == [5, 4, 3, 2]
        assert len(store.recent_ticks("p", limit=None)) == 6

    def test_pools_lists_every_recorded_pool(self, store: Store) -> None:
        """pools() names each pool with a tick or an instance, once, sorted."""
        assert store.pools() == []
        store.record_tick("tts", T0, {}, {"desired": 1}, {})
        store.record_tick("asr", T0, {}, {"desired": 1}, {})
        store.record_lifecycle("ocr", "i-9", Lifecycle.BOOTING, T0)
        store.record_tick("asr", T0 + timedelta(seconds=15), {}, {"desired": 1}, {})
        assert store.pools() == ["asr", "ocr", "tts"]

    def test_pause_and_resume_a_pool(self, store: Store) -> None:
        """set_paused keeps the latest pause per pool with its reason and time; other pools unaffected."""
        assert store.pause_state("asr") is None
        store.set_paused("asr", True, T0, "peak-season freeze")
        state = store.pause_state("asr")
        assert state is not None and state["paused"] is True and state["reason"] == "peak-season freeze"
        assert datetime.fromisoformat(state["at"]) == T0
        store.set_paused("asr", False, T0 + timedelta(hours=1))
        assert store.pause_state("asr") == {"paused": False, "reason": None,
                                            "at": (T0 + timedelta(hours=1)).isoformat()}
        assert store.pause_state("ocr") is None

    def test_outcome_attached_to_tick(self, store: Store) -> None:
        """update_tick attaches the executor's outcome and error to the recorded tick."""
        tick_id = store.record_tick("p", T0, {}, {"desired": 1}, {})
        store.update_tick(tick_id, outcome={"launched": ["i-1"]}, error="quota")
        tick = store.recent_ticks("p")[0]
        assert tick["decision"]["outcome"] == {"launched": ["i-1"]} and "quota" in tick["error"]

    def test_update_of_unknown_tick_raises(self, store: Store) -> None:
        """Updating a tick that does not exist raises StoreError."""
        with pytest.raises(StoreError):
            store.update_tick(987654, outcome={})

    def test_warm_pool_lifecycles_round_trip(self, store: Store) -> None:
        """The warm pool's states (preparing, stopped, starting) are recorded and read back in order."""
        for offset, state in enumerate((Lifecycle.PREPARING, Lifecycle.STOPPED, Lifecycle.STARTING,
                                        Lifecycle.SERVING, Lifecycle.STOPPED)):
            store.record_lifecycle("w", "i-warm", state, T0 + timedelta(seconds=offset), {"step": offset})
        assert store.lifecycles("w")["i-warm"] == (Lifecycle.STOPPED, T0 + timedelta(seconds=4))

    def test_lifecycle_latest_wins_and_repeats_collapse(self, store: Store) -> None:
        """lifecycles() gives each instance's latest state and when it was entered; repeats are not new."""
        store.record_lifecycle("p", "i-1", Lifecycle.LAUNCHING, T0)
        store.record_lifecycle("p", "i-1", Lifecycle.BOOTING, T0 + timedelta(seconds=5))
        store.record_lifecycle("p", "i-1", Lifecycle.SERVING, T0 + timedelta(seconds=60))
        store.record_lifecycle("p", "i-1", Lifecycle.SERVING, T0 + timedelta(seconds=75))
        store.record_lifecycle(
            "p", "i-2", Lifecycle.DRAINING, T0 + timedelta(seconds=90), {"reason": "victim"}
        )
        latest = store.lifecycles("p")
        assert latest["i-1"] == (Lifecycle.SERVING, T0 + timedelta(seconds=60))
        assert latest["i-2"][0] == Lifecycle.DRAINING
        assert store.lifecycles("q") == {}

    def test_intent_is_open_until_closed(self, store: Store) -> None:
        """An intent is listed open (with its token, ids and tick) until closed with a status and result."""
        launch = store.open_intent("p", IntentKind.LAUNCH, T0, tick_id=7, token="p-tick-7", count=2,
                                   detail={"types": ["gpu"]})
        stop = store.open_intent("p", IntentKind.STOP, T0, tick_id=7, instance_ids=("i-1", "i-2"))
        store.open_intent("other", IntentKind.TERMINATE, T0, instance_ids=("i-9",))
        opened = store.intents("p", open_only=True)
        assert [(i.id, i.kind, i.token, i.count, i.instance_ids) for i in opened] == [
            (launch, IntentKind.LAUNCH, "p-tick-7", 2, ()),
            (stop, IntentKind.STOP, None, 0, ("i-1", "i-2")),
        ]
        assert opened[0].detail == {"types": ["gpu"]} and opened[0].created_at == T0
        store.close_intent(launch, IntentStatus.OK, T0 + timedelta(seconds=1), result={"instances": ["i-3"]})
        store.close_intent(stop, IntentStatus.FAILED, T0 + timedelta(seconds=1), error="throttled")
        assert store.intents("p", open_only=True) == []
        done = {i.id: i for i in store.intents("p", tick_id=7)}
        assert done[launch].status == IntentStatus.OK and done[launch].result == {"instances": ["i-3"]}
        assert done[stop].status == IntentStatus.FAILED and done[stop].error == "throttled"
        assert done[stop].closed_at == T0 + timedelta(seconds=1)

    def test_shadow_intents_are_never_open(self, store: Store) -> None:
        """An intent recorded with the shadow status is listed for its tick, never as open work."""
        store.open_intent("p", IntentKind.LAUNCH, T0, tick_id=3, count=1, status=IntentStatus.SHADOW)
        assert store.intents("p", open_only=True) == []
        assert [i.status for i in store.intents("p", tick_id=3)] == [IntentStatus.SHADOW]
        assert len(store.intents("p", limit=1)) == 1

    def test_close_of_unknown_intent_raises(self, store: Store) -> None:
        """Closing an intent that does not exist raises StoreError."""
        with pytest.raises(StoreError):
            store.close_intent(987654, IntentStatus.OK, T0)

    def test_prune_drops_old_completed_intents_and_keeps_open_ones(self, store: Store) -> None:
        """prune deletes completed intents older than the cutoff; an open one (for reconcile) and recent
        ones stay."""
        old_done = store.open_intent("p", IntentKind.STOP, T0, instance_ids=("i-1",))
        store.close_intent(old_done, IntentStatus.OK, T0)
        old_open = store.open_intent("p", IntentKind.LAUNCH, T0, token="t", count=1)
        recent = store.open_intent("p", IntentKind.TERMINATE, T0 + timedelta(days=2), instance_ids=("i-2",))
        store.prune(T0 + timedelta(days=1))
        assert [i.id for i in store.intents("p")] == [old_open, recent]
