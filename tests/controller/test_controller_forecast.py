"""The live forecast on the recording fakes: history read once per refresh, recorded, exported, explained,
and acted on only in forecast_and_scale, never to scale in."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from autoscaler.errors import MetricsUnavailable
from autoscaler.metrics.fake import FakeMetricsSource
from autoscaler.metrics.history import history_promql
from autoscaler.policy.explain import render_reasons
from autoscaler.testing.controller_rig import POLICY, Rig, make_rig

DEMAND = "sum(asr_concurrent_streams)"
HISTORY = history_promql(DEMAND, timedelta(minutes=5))
#: A Tuesday, 08:45 UTC: business hours (80 streams, 8 nodes) start at 09:00; nights are 20 (2 nodes).
MORNING = datetime(2026, 11, 24, 8, 45, tzinfo=UTC)
STEP_S = 300


def forecast_policy(mode: str = "forecast_and_scale", *, refresh: str = "30m") -> str:
    """The rig's pool sized by a per-pool demand check (10 streams a node), with a forecast, lead 10 min."""
    return POLICY.replace(
        "    - {name: streams, type: target_tracking, query: streams_per_node, target: 7}\n",
        f"    - {{name: demand, type: target_tracking, per: pool, query: '{DEMAND}', target: 10}}\n"
        f"  forecast: {{mode: {mode}, check: demand, lead: 10m, refresh: {refresh}}}\n",
    ).replace("max_nodes: 5", "max_nodes: 12")


def business(bucket_start: float) -> float:
    """Streams in the 5-minute bucket starting at ``bucket_start``: 80 from 09:00 to 17:00 UTC, else 20."""
    return 80.0 if 9 <= datetime.fromtimestamp(bucket_start, UTC).hour < 17 else 20.0


def points(days: float, end: datetime = MORNING) -> list[tuple[float, float]]:
    """History points as the range query returns them: 1 ms before each step's end, that step's peak."""
    last = math.floor(end.timestamp() / STEP_S) * STEP_S
    first = last - int(days * 86400)
    return [(datetime.fromtimestamp(t - 0.001, UTC).timestamp(), business(t - STEP_S))
            for t in range(first + STEP_S, last + 1, STEP_S)]


def rig_at(mode: str = "forecast_and_scale", *, days: float = 3, demand: float = 20.0, **kw: str) -> Rig:
    """A rig at MORNING with ``days`` of history and the demand check reading ``demand``."""
    rig = make_rig(policy_text=forecast_policy(mode, **kw))
    rig.clock.at = MORNING
    metrics: FakeMetricsSource = rig.metrics
    metrics.set(DEMAND, demand)
    metrics.set_range(HISTORY, points(days))
    return rig


def range_calls(rig: Rig) -> list[datetime]:
    """The ``now`` (window end) of every range query the controller made."""
    return [c.now for c in rig.metrics.calls if c.method == "query_range"]


def forecast_reason(rig: Rig) -> str:
    """The forecast reason's message of the last tick."""
    tick = rig.store.recent_ticks("unit", limit=1)[0]
    return next(r["message"] for r in tick["decision"]["reasons"] if r["kind"] == "forecast")


def test_history_is_read_once_per_refresh_not_per_tick() -> None:
    """41 ticks a minute apart, a 30-minute refresh: two range queries, each ending before its tick."""
    rig = rig_at()
    for _ in range(41):
        outcome = rig.controller.tick()
        assert outcome.ok, outcome.errors
        rig.serve(*(i.id for i in rig.running()))
        rig.clock.advance(60)
    calls = range_calls(rig)
    assert len(calls) == 2
    assert calls[0] <= MORNING and calls[1] <= MORNING + timedelta(minutes=30)
    assert calls[1] - calls[0] == timedelta(minutes=30)
    records = [t["inputs"]["forecast"] for t in reversed(rig.store.recent_ticks("unit", limit=41))]
    assert [r["refreshed"] for r in records].count(True) == 2
    assert records[0]["range_queries"] == 1 and len(records[0]["values"]) == 6 * 12 + 1
    assert "values" not in records[1]


def test_a_changed_forecast_section_is_read_again_at_once() -> None:
    """Editing the policy's forecast section does not wait for the next refresh."""
    rig = rig_at()
    rig.controller.tick()
    changed = make_rig(policy_text=forecast_policy("forecast_only")).policy
    rig.controller._policy = lambda: changed
    rig.clock.advance(60)
    rig.controller.tick()
    assert len(range_calls(rig)) == 2


def test_forecast_and_scale_raises_ahead_by_the_lead() -> None:
    """Business hours start at 09:00 and the lead is 10 min: no raise at 08:45, a raise to 8 from 08:50,
    while the demand check itself still asks for 2."""
    rig = rig_at()
    first = rig.controller.tick()
    assert first.decision is not None and first.decision.desired == 2
    assert forecast_reason(rig) == "forecast: 20.0 within 600s needs 2 nodes (2 already meets it)"
    rig.serve(*(i.id for i in rig.running()))
    rig.clock.advance(5 * 60)
    second = rig.controller.tick()
    assert second.decision is not None and second.decision.desired == 8
    assert len(second.launched) == 6
    assert forecast_reason(rig) == "forecast: 80.0 within 600s needs 8 nodes; raises 2 to 8"


def test_forecast_only_records_but_does_not_change_the_count() -> None:
    """forecast_only at 08:50: the floor of 8 is in the trail, the record and the metrics; 2 are launched."""
    rig = rig_at("forecast_only")
    rig.clock.advance(5 * 60)
    outcome = rig.controller.tick()
    assert outcome.decision is not None and outcome.decision.desired == 2
    assert forecast_reason(rig) == "forecast: 80.0 within 600s needs 8 nodes (forecast_only: not applied)"
    record = rig.store.recent_ticks("unit", limit=1)[0]["inputs"]["forecast"]
    assert record["mode"] == "forecast_only" and record["problem"] is None
    assert record["history_s"] == pytest.approx(3 * 86400 + 5 * 60, abs=STEP_S)
    registry = rig.controller.telemetry.registry
    assert registry.get_sample_value("autoscaler_forecast_floor_nodes", {"pool": "unit"}) == 8
    assert registry.get_sample_value("autoscaler_forecast_demand", {"pool": "unit"}) == 80
    history = registry.get_sample_value("autoscaler_forecast_history_seconds", {"pool": "unit"})
    assert history == record["history_s"]
    mode = {m: registry.get_sample_value("autoscaler_forecast_mode", {"pool": "unit", "mode": m})
            for m in ("forecast_only", "forecast_and_scale")}
    assert mode == {"forecast_only": 1, "forecast_and_scale": 0}


def test_under_a_day_of_history_says_so_and_does_not_act() -> None:
    """12 hours of history: the trail, the record and explain say how much there is; nothing is raised."""
    rig = rig_at(days=0.5)
    rig.clock.advance(5 * 60)
    outcome = rig.controller.tick()
    assert outcome.ok and outcome.decision is not None and outcome.decision.desired == 2
    message = forecast_reason(rig)
    assert message.startswith("no forecast floor: 12.") and "needs at least 24 h before it acts" in message
    record = rig.store.recent_ticks("unit", limit=1)[0]["inputs"]["forecast"]
    assert record["problem"] == message.removeprefix("no forecast floor: ")
    assert math.isnan(rig.controller.telemetry.registry.get_sample_value(
        "autoscaler_forecast_floor_nodes", {"pool": "unit"}) or 0.0)


def test_unreachable_history_is_a_reason_and_is_retried_at_the_next_refresh() -> None:
    """The range query failing: the tick runs, the trail says why there is no floor, no node is removed,
    and the history is asked again only when the refresh is due."""
    rig = rig_at(demand=45.0)
    rig.metrics.set_raises(HISTORY, MetricsUnavailable("range query failed: timed out: no answer within 3s"))
    outcomes = []
    for _ in range(5):
        outcomes.append(rig.controller.tick())
        rig.serve(*(i.id for i in rig.running()))
        rig.clock.advance(60)
    assert all(o.ok for o in outcomes), [o.errors for o in outcomes]
    assert forecast_reason(rig) == ("no forecast floor: history unavailable: range query failed: timed out: "
                                    "no answer within 3s")
    assert len(range_calls(rig)) == 1
    assert all(o.decision is not None and o.decision.desired == 5 and not o.drained for o in outcomes)
    rig.metrics.set_range(HISTORY, points(3))
    rig.clock.advance(30 * 60)
    rig.controller.tick()
    assert len(range_calls(rig)) == 2
    assert forecast_reason(rig).startswith("forecast: ")


def test_nan_and_gaps_in_history_are_dropped_not_read_as_zero() -> None:
    """NaN points are left out by the source and negative ones by the forecaster (a note says how many);
    both and a daily hole are counted as steps without data, and the floor still comes from the rest."""
    history = points(3)
    holed = [(t, v) for t, v in history if datetime.fromtimestamp(t, UTC).hour != 3]
    dirty = [(t, math.nan if i % 17 == 0 else (-1.0 if i % 19 == 0 else v)) for i, (t, v) in enumerate(holed)]
    rig = rig_at()
    rig.metrics.set_range(HISTORY, dirty)
    rig.clock.advance(5 * 60)
    outcome = rig.controller.tick()
    assert outcome.ok and outcome.decision is not None and outcome.decision.desired == 8
    record = rig.store.recent_ticks("unit", limit=1)[0]["inputs"]["forecast"]
    negative = sum(1 for _, v in dirty if v < 0)
    nan = sum(1 for _, v in dirty if math.isnan(v))
    hole = len(history) - len(holed)
    assert record["notes"] == [
        f"{negative} samples dropped (NaN, infinite or negative)",
        f"history: {len(dirty) - nan} points of 300s peaks from 1 range query, "
        f"{hole + nan} steps without data",
    ]


def test_the_forecast_never_scales_in_by_itself() -> None:
    """Five busy nodes, the demand check without data, a night-time forecast of 2: nothing is drained."""
    rig = rig_at(demand=45.0)
    rig.clock.at = MORNING - timedelta(hours=6)
    for _ in range(3):
        rig.controller.tick()
        rig.serve(*(i.id for i in rig.running()))
        rig.clock.advance(60)
    assert len(rig.balancer.current()) == 5
    rig.metrics.set_missing(DEMAND, "no data: empty result")
    for _ in range(5):
        outcome = rig.controller.tick()
        assert outcome.decision is not None and outcome.decision.desired == 5 and not outcome.drained
        rig.clock.advance(60)
    assert forecast_reason(rig) == "forecast: 20.0 within 600s needs 2 nodes (5 already meets it)"


def test_explain_shows_the_forecast() -> None:
    """``explain`` renders the forecast step in its own section, and where the forecast came from."""
    rig = rig_at()
    rig.clock.advance(5 * 60)
    _policy, observation, decision = rig.controller.explain()
    text = render_reasons(decision)
    assert ("look-ahead and forecast:\n"
            "  [forecast] demand: forecast: 80.0 within 600s needs 8 nodes; raises 2 to 8") in text
    assert observation.forecast is not None
    lines = observation.forecast.describe()
    assert lines[0].startswith("forecast (forecast_and_scale): made at 2026-11-24T08:50:00+00:00 from 72.")
    assert lines[0].endswith(f"of the history of {DEMAND}; next refresh at 2026-11-24T09:20:00+00:00")
    assert "note: history: 864 points of 300s peaks from 1 range query" in "\n".join(lines)


def test_a_mean_aggregate_reads_each_steps_mean() -> None:
    """``aggregate: mean`` asks Prometheus for each step's mean (avg_over_time) instead of its peak."""
    rig = make_rig(policy_text=forecast_policy().replace("refresh: 30m}", "refresh: 30m, aggregate: mean}"))
    rig.clock.at = MORNING
    rig.metrics.set(DEMAND, 20.0)
    rig.controller.tick()
    calls = [c.promql for c in rig.metrics.calls if c.method == "query_range"]
    assert calls == [f"avg_over_time(({DEMAND})[300s:])"]
    assert f"max_over_time(({DEMAND})[300s:])" == HISTORY


def test_forecast_series_go_when_the_section_is_removed() -> None:
    """A reload without the forecast section drops the pool's forecast gauges instead of freezing them."""
    rig = rig_at()
    rig.controller.tick()
    registry = rig.controller.telemetry.registry
    assert registry.get_sample_value("autoscaler_forecast_floor_nodes", {"pool": "unit"}) == 2
    plain = make_rig().policy
    rig.controller._policy = lambda: plain
    rig.metrics.set("streams_per_node", 1.0)
    rig.clock.advance(60)
    rig.controller.tick()
    assert registry.get_sample_value("autoscaler_forecast_floor_nodes", {"pool": "unit"}) is None
    mode = {"pool": "unit", "mode": "forecast_only"}
    assert registry.get_sample_value("autoscaler_forecast_mode", mode) is None
