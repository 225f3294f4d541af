"""The seasonal forecast (pure): what it learns from history, and what the engine's forecast floor does."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from policy_helpers import nodes, policy, reason, samples

from autoscaler.policy.engine import EngineMemory, decide
from autoscaler.policy.forecast import Forecast, seasonal_forecast

STEP = timedelta(minutes=5)
#: A Saturday, midnight UTC: nine days of history end here (Thursday 00:00 to Friday 24:00).
SATURDAY = datetime(2025, 3, 8, tzinfo=UTC)
DEMAND = {"name": "demand", "type": "target_tracking", "per": "pool", "query": "sum(streams)", "target": 10}


def weekly_shape(t: float) -> float:
    """Streams at epoch second ``t``: 100 from 09:00 to 17:00 on weekdays, 40 at weekends, 10 at night."""
    when = datetime.fromtimestamp(t, UTC)
    if not 9 <= when.hour < 17:
        return 10.0
    return 40.0 if when.weekday() >= 5 else 100.0


Array = np.ndarray[Any, Any]


def history(days: float, end: datetime = SATURDAY, every: int = 60) -> tuple[Array, Array]:
    """One sample a minute of ``weekly_shape`` over the ``days`` before ``end``."""
    times = np.arange(end.timestamp() - days * 86400, end.timestamp(), every, dtype=np.float64)
    return times, np.array([weekly_shape(t) for t in times])


def at(forecast: Forecast, when: datetime) -> float | None:
    """The forecast's value for the bucket holding ``when``."""
    return forecast.values[int((when - forecast.start).total_seconds() // forecast.step_s)]


def forecast_policy(mode: str = "forecast_and_scale", **extra: Any) -> Any:
    """A pool sized by a per-pool demand check, with a forecast on it (lead 10 min)."""
    return policy(checks=[DEMAND], max_nodes=50,
                  forecast={"mode": mode, "check": "demand", "lead": "10m", **extra})


def test_time_of_day_and_day_of_week_are_learned_from_nine_days() -> None:
    """Nine days of a weekday/weekend shape: the day's shape by time of day, and a Saturday that leans
    on the Saturday before (median of the days averaged with the same bucket a week earlier)."""
    times, values = history(9)
    saturday = seasonal_forecast(times, values, now=SATURDAY, step=STEP, horizon=timedelta(hours=24))
    assert saturday.usable and saturday.problem is None
    assert saturday.history_s == 9 * 86400
    assert at(saturday, SATURDAY + timedelta(hours=3)) == 10.0
    # Days: 7 weekdays at 100 and 2 weekend days at 40, median 100; last Saturday 40: (100 + 40) / 2.
    assert at(saturday, SATURDAY + timedelta(hours=12)) == 70.0
    assert at(saturday, SATURDAY + timedelta(hours=8, minutes=55)) == 10.0
    assert at(saturday, SATURDAY + timedelta(hours=9)) == 70.0
    assert at(saturday, SATURDAY + timedelta(hours=17)) == 10.0
    friday_now = SATURDAY - timedelta(days=1)
    times, values = history(9, end=friday_now)
    friday = seasonal_forecast(times, values, now=friday_now, step=STEP, horizon=timedelta(hours=24))
    # A Friday learns from weekdays and the Friday before: 100 at noon.
    assert at(friday, friday_now + timedelta(hours=12)) == 100.0
    assert friday.peak(friday_now + timedelta(hours=8, minutes=50), friday_now + timedelta(hours=9)) == 100.0
    assert friday.peak(friday_now + timedelta(hours=8), friday_now + timedelta(hours=8, minutes=50)) == 10.0


def test_under_min_history_gives_a_problem_and_the_engine_does_not_act() -> None:
    """20 h of history: no values, a problem that says how much history there is, and no floor."""
    times, values = history(20 / 24)
    forecast = seasonal_forecast(times, values, now=SATURDAY, step=STEP, horizon=timedelta(hours=6))
    assert not forecast.usable
    assert forecast.values == ()
    assert forecast.problem == "20.0 h of history; the forecast needs at least 24 h before it acts"
    evaluation = decide(forecast_policy(), samples(demand=20.0), nodes(serving=2, now=SATURDAY),
                        EngineMemory(), SATURDAY, forecast)
    floor = reason(evaluation, "forecast")
    assert floor.message == f"no forecast floor: {forecast.problem}"
    assert floor.detail["floor"] is None
    assert evaluation.decision.desired == 2 and evaluation.decision.launch == 0


def test_nan_infinite_and_negative_samples_are_dropped() -> None:
    """Bad samples are counted in a note and change nothing: the forecast equals the clean one."""
    times, values = history(3)
    clean = seasonal_forecast(times, values, now=SATURDAY, step=STEP, horizon=timedelta(hours=6))
    dirty_values = values.copy()
    bad = np.arange(7, len(values), 13)
    dirty_values[bad[0::3]] = math.nan
    dirty_values[bad[1::3]] = math.inf
    dirty_values[bad[2::3]] = -5.0
    dirty = seasonal_forecast(times, dirty_values, now=SATURDAY, step=STEP, horizon=timedelta(hours=6))
    assert dirty.values == clean.values
    assert dirty.notes == (f"{len(bad)} samples dropped (NaN, infinite or negative)",)
    assert all(v is None or math.isfinite(v) for v in dirty.values)


def test_gaps_are_unknown_buckets_not_zero() -> None:
    """No sample between 02:00 and 03:00 on any day: those buckets are None, and the engine says it
    has no history for that time of day instead of reading a zero."""
    times, values = history(3)
    hours = np.array([datetime.fromtimestamp(t, UTC).hour for t in times])
    keep = hours != 2
    forecast = seasonal_forecast(times[keep], values[keep], now=SATURDAY, step=STEP,
                                 horizon=timedelta(hours=6))
    assert forecast.usable
    assert at(forecast, SATURDAY + timedelta(hours=1, minutes=55)) == 10.0
    gap = [at(forecast, SATURDAY + timedelta(hours=2, minutes=m)) for m in range(0, 60, 5)]
    assert gap == [None] * 12
    assert at(forecast, SATURDAY + timedelta(hours=3)) == 10.0
    now = SATURDAY + timedelta(hours=2, minutes=5)
    evaluation = decide(forecast_policy(lead="5m"), samples(demand=10.0), nodes(serving=1, now=now),
                        EngineMemory(), now, forecast)
    assert reason(evaluation, "forecast").message == "no forecast floor: no history for this time of day"
    assert evaluation.decision.desired == 1


def test_samples_at_or_after_now_are_never_read() -> None:
    """The forecaster itself ignores samples at or after ``now``: a wild future changes nothing."""
    times, values = history(3, end=SATURDAY + timedelta(days=1))
    future = times >= SATURDAY.timestamp()
    wild = values.copy()
    wild[future] = 10_000.0
    honest = seasonal_forecast(times, values, now=SATURDAY, step=STEP, horizon=timedelta(hours=6))
    peeking = seasonal_forecast(times, wild, now=SATURDAY, step=STEP, horizon=timedelta(hours=6))
    assert honest == peeking


def test_forecast_only_records_the_floor_without_applying_it() -> None:
    """forecast_only: the reason carries the floor the forecast asks for; the count does not move."""
    times, values = history(3, end=datetime(2025, 3, 6, tzinfo=UTC))
    now = datetime(2025, 3, 6, 8, 55, tzinfo=UTC)
    forecast = seasonal_forecast(times, values, now=now, step=STEP, horizon=timedelta(hours=6))
    for mode, desired in (("forecast_only", 1), ("forecast_and_scale", 10)):
        evaluation = decide(forecast_policy(mode), samples(demand=10.0), nodes(serving=1, now=now),
                            EngineMemory(), now, forecast)
        floor = reason(evaluation, "forecast")
        assert floor.detail["floor"] == 10 and floor.detail["mode"] == mode
        assert evaluation.decision.desired == desired, mode


def test_the_floor_never_scales_in() -> None:
    """A forecast of night-time demand while the checks hold a larger pool removes nothing."""
    times, values = history(3)
    now = SATURDAY + timedelta(hours=1)
    forecast = seasonal_forecast(times, values, now=now, step=STEP, horizon=timedelta(hours=6))
    evaluation = decide(forecast_policy(), samples(demand=None), nodes(serving=6, now=now), EngineMemory(),
                        now, forecast)
    floor = reason(evaluation, "forecast")
    assert floor.detail["floor"] == 1
    assert evaluation.decision.desired == 6 and not evaluation.decision.victims
