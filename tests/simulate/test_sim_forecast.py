"""The forecast in a dry-run: learned from the replayed past only, shown in summary.json and the report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from ruamel.yaml import YAML
from sim_helpers import POLICIES, TWITTER
from typer.testing import CliRunner

import autoscaler.simulate.fleet as fleet_module
from autoscaler.policy.forecast import Forecast, seasonal_forecast
from autoscaler.policy.load import load_policy
from autoscaler.policy.model import PoolPolicy
from autoscaler.simulate.demand import Demand
from autoscaler.simulate.fleet import FleetModel, Replay, fit_policy, replay
from autoscaler.simulate.scenario import Workload
from autoscaler.simulate.workload import ServiceLaw

FLEET = FleetModel(instance_type="sim", streams_per_node=10, boot_s=300, price_per_hour=1.0,
                   drain_timeout_s=None,
                   gpu_memory_mib=24576, model_memory_mib=3400, stream_memory_mib=1900)
LAW = ServiceLaw(Workload.model_validate({"audio_seconds": {"distribution": "fixed", "mean": 30}}))
START = datetime(2025, 1, 6, tzinfo=UTC)
DAY = 86400
TICK = 60
#: The two demands are identical before this second of the replay (a refresh instant) and differ after.
SPLIT = DAY + DAY // 2
DEMAND_CHECK = {"name": "demand", "type": "target_tracking", "per": "pool", "signal": "concurrent_streams",
                "query": "sum(asr_concurrent_streams)", "target": 7}
#: The replay's forecaster, unwrapped (the spies below wrap this, never each other).
_FORECAST = fleet_module._Forecaster.forecast
FORECAST = {"mode": "forecast_and_scale", "check": "demand", "lead": "10m", "refresh": "30m"}


def daily(seconds: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    """A daily wave: 20 streams at night, 110 at the midday peak."""
    t = np.arange(seconds)
    wave = np.maximum(0.0, np.sin(2 * np.pi * (t / DAY - 0.25)))
    return (20 + 90 * wave).astype(np.int64)


def forecast_policy(**forecast: Any) -> PoolPolicy:
    """The HPA-like example sized by a per-pool concurrent-streams check, with a forecast on it."""
    base = fit_policy(load_policy(POLICIES / "hpa-like.yaml"), FLEET, min_nodes=2, max_nodes=30)
    data = base.model_dump()
    data["scaling"]["checks"] = [DEMAND_CHECK]
    data["scaling"]["forecast"] = FORECAST | forecast
    return PoolPolicy.model_validate(data)


@dataclass
class Seen:
    """What a replay's forecaster did: each tick's forecast, and each fit's history (the tick's now,
    times, values)."""

    forecasts: list[tuple[datetime, Forecast | None]] = field(default_factory=list)
    fits: list[tuple[datetime, np.ndarray[Any, Any], np.ndarray[Any, Any]]] = field(default_factory=list)
    tick: datetime | None = None


def spy_replay(
    monkeypatch: pytest.MonkeyPatch, streams: np.ndarray[Any, Any], policy: PoolPolicy
) -> tuple[Replay, Seen]:
    """Replay ``streams`` recording every forecast handed to the engine and every history it was fitted on."""
    seen = Seen()

    def forecast(self: Any, now: datetime, samples: Any) -> Forecast | None:
        seen.tick = now
        result = _FORECAST(self, now, samples)
        seen.forecasts.append((now, result))
        return result

    def fit(times: Any, values: Any, **kwargs: Any) -> Forecast:
        assert seen.tick is not None
        seen.fits.append((seen.tick, np.array(times, dtype=np.float64), np.array(values, dtype=np.float64)))
        return seasonal_forecast(times, values, **kwargs)

    monkeypatch.setattr(fleet_module._Forecaster, "forecast", forecast)
    monkeypatch.setattr(fleet_module, "seasonal_forecast", fit)
    demand = Demand(streams=streams, scale=1.0, replay_at=START, arrivals=None, description="test")
    return replay("test", policy, demand, FLEET, LAW, tick_s=TICK, seed=3), seen


def test_forecast_never_reads_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two demands identical before SPLIT and different after: the forecaster is fitted only on samples
    before each refresh instant, on identical histories up to SPLIT (the refresh at SPLIT included), and
    gives identical forecasts and decisions before it."""
    same = daily(3 * DAY)
    other = same.copy()
    other[SPLIT:] += 60  # a wholly different future
    policy = forecast_policy()
    first, seen_a = spy_replay(monkeypatch, same, policy)
    second, seen_b = spy_replay(monkeypatch, other, policy)
    split_tick = SPLIT // TICK
    split = START + timedelta(seconds=SPLIT)
    # Every fit read only samples taken before its own instant.
    for now, times, _ in seen_a.fits + seen_b.fits:
        assert times.size == 0 or times.max() < now.timestamp(), now
    fits_to_split = [i for i, (now, _, _) in enumerate(seen_a.fits) if now <= split]
    assert seen_a.fits[fits_to_split[-1]][0] == split  # a refresh falls exactly on SPLIT
    for i in fits_to_split:
        (now_a, times_a, values_a), (now_b, times_b, values_b) = seen_a.fits[i], seen_b.fits[i]
        assert now_a == now_b, now_a
        assert np.array_equal(times_a, times_b) and np.array_equal(values_a, values_b), now_a
    assert len(seen_a.forecasts) == len(seen_b.forecasts) == 3 * DAY // TICK
    assert seen_a.forecasts[split_tick][0] == split
    # Not vacuous: by SPLIT the forecast is usable and its floor acts on the decisions.
    at_split = seen_a.forecasts[split_tick][1]
    assert at_split is not None and at_split.usable
    assert first.forecast_raised > 0
    assert seen_a.forecasts[: split_tick + 1] == seen_b.forecasts[: split_tick + 1]
    for column in ("desired", "ready", "booting", "draining", "forecast_floor"):
        a, b = getattr(first, column)[:split_tick], getattr(second, column)[:split_tick]
        assert np.array_equal(a, b), column
    # ...and the test can tell: once the different past is a day old, the forecasts differ.
    assert seen_a.forecasts[-1][1] != seen_b.forecasts[-1][1]
    assert not np.array_equal(first.forecast_floor, second.forecast_floor)


def test_no_floor_before_min_history_then_one_ahead_of_the_daily_peak() -> None:
    """Under a day of replayed past: no floor (-1) and nothing raised; from day 2 on, the floor rises
    before the demand does, by the lead."""
    streams = daily(2 * DAY)
    policy = forecast_policy()
    demand = Demand(streams=streams, scale=1.0, replay_at=START, arrivals=None, description="test")
    result = replay("test", policy, demand, FLEET, LAW, tick_s=TICK, seed=3)
    first_day = result.forecast_floor[: DAY // TICK]
    assert (first_day == -1).all()
    assert (result.forecast_floor[DAY // TICK + 1:] >= 0).all()
    second_day = result.forecast_floor[DAY // TICK:]
    need = -(-daily(DAY)[:: TICK] // 7)
    # The floor at a tick covers the peak of the next 10 minutes, so it is at least the need now...
    assert (second_day[1:] >= need[1:len(second_day)] - 1).all()
    # ...and it leads: when the need rises, the floor was already there at the tick before.
    rising = np.flatnonzero(np.diff(need) > 0) + 1
    assert rising.size and (second_day[rising - 1] >= need[rising]).mean() > 0.9


def test_forecast_only_changes_nothing() -> None:
    """forecast_only records a floor every tick after a day, but every decision equals the same policy
    without a forecast."""
    streams = daily(2 * DAY)
    demand = Demand(streams=streams, scale=1.0, replay_at=START, arrivals=None, description="test")
    only = replay("only", forecast_policy(mode="forecast_only"), demand, FLEET, LAW, tick_s=TICK, seed=3)
    data = forecast_policy().model_dump()
    data["scaling"]["forecast"] = None
    without = replay("none", PoolPolicy.model_validate(data), demand, FLEET, LAW, tick_s=TICK, seed=3)
    assert (only.forecast_floor[DAY // TICK + 1:] >= 0).all()
    assert only.forecast_raised == 0 and only.forecast_above > 0
    assert np.array_equal(only.desired, without.desired)
    assert only.node_seconds == without.node_seconds


@pytest.mark.parametrize("mode", ["forecast_only", "forecast_and_scale"])
def test_report_and_summary_show_the_forecast(mode: str, tmp_path: Path, cli_app: typer.Typer) -> None:
    """summary.json says the forecast's mode and how many ticks it raised the count; the report draws
    the floor on the capacity plot and says whether it acted."""
    yaml = YAML(typ="safe", pure=True)
    policy = yaml.load((POLICIES / "hpa-like.yaml").read_text(encoding="utf-8"))
    policy["scaling"]["checks"] = [DEMAND_CHECK]
    policy["scaling"]["forecast"] = FORECAST | {"mode": mode}
    scenario = {
        "policy": str(tmp_path / "forecast.yaml"),
        "demand": {"format": "twitter", "path": str(TWITTER), "start": "1h", "duration": "35h",
                   "peak_nodes": 12},
        "workload": {"audio_seconds": {"distribution": "fixed", "mean": 60}},
        "fleet": {"streams_per_node": 10, "boot_seconds": 180, "price_per_hour": 1.0},
        "pool": {"min_nodes": 2, "max_nodes": 20},
        "tick_seconds": 60,
        "seed": 1,
    }
    for name, body in (("forecast.yaml", policy), ("scenario.yaml", scenario)):
        with (tmp_path / name).open("w", encoding="utf-8") as handle:
            yaml.dump(body, handle)
    result = CliRunner().invoke(cli_app, ["dry-run", "--scenario", str(tmp_path / "scenario.yaml"),
                                          "--out", str(tmp_path / "out"), "--no-options"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    forecast = summary["forecast"]
    assert forecast["mode"] == mode
    assert forecast["ticks_with_floor"] > 0
    assert "forecast" not in summary["baselines"]["hpa_like"]
    html = (tmp_path / "out" / "report.html").read_text()
    if mode == "forecast_and_scale":
        assert forecast["ticks_raised"] > 0
        assert "forecast_and_scale (acting): raised the count on" in html
        assert "forecast floor × C: forecast (acting)" in html
    else:
        assert forecast["ticks_raised"] == 0 and forecast["ticks_floor_above_checks"] > 0
        assert "forecast_only (recorded, not applied)" in html
        assert "forecast floor × C: forecast (forecast_only, not applied)" in html
