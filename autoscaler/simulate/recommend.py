"""Plain-language recommendations from a dry run: the floor schedule, the max nodes, the cost.

- **Max nodes**: the peak of required nodes ``ceil(peak streams / C)`` against the policy's
  ``max_nodes`` (and how long demand was above ``max_nodes × C``).
- **Floor schedule**: for each hour of the day (in the policy's schedule time zone, else UTC), the
  nodes needed for at least 90 % of that hour on *every* replayed day; hours whose floor is above
  ``min_nodes`` become cron floors (adjacent hours with one floor merge into one window), written as
  YAML to paste under ``scaling.schedules``. Needs at least one whole day of demand.
- **Cost**: each run's bill over the window and per 30 days, against the oracle and the baselines,
  and where the waiting happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from zoneinfo import ZoneInfo

import numpy as np

from autoscaler.simulate.run import DryRun, Run

_DAY = 86_400
#: A floor covers what is needed for this share of the hour.
_FLOOR_SHARE = 0.9


@dataclass(frozen=True)
class FloorWindow:
    """One recommended floor: from ``hour`` for ``hours`` hours every day, at least ``nodes``."""

    hour: int
    hours: int
    nodes: int


@dataclass(frozen=True)
class Recommendations:
    """What the report recommends, as sentences and as a YAML snippet."""

    lines: tuple[str, ...]
    floors: tuple[FloorWindow, ...]
    timezone: str
    schedule_yaml: str


def _zone(result: DryRun) -> str:
    for schedule in result.scenario.policy.scaling.schedules:
        return schedule.timezone
    return "UTC"


def floor_schedule(result: DryRun) -> tuple[list[FloorWindow], str]:
    """Per-hour floors that every replayed day needed for 90 % of the hour, above ``min_nodes``."""
    zone_name = _zone(result)
    required = result.required
    start = result.demand.replay_at.astimezone(ZoneInfo(zone_name))
    # Align to the first local midnight so rows are whole local days.
    skip = (_DAY - (start.hour * 3600 + start.minute * 60 + start.second)) % _DAY
    days = (len(required) - skip) // _DAY
    if days < 1:
        return [], zone_name
    grid = required[skip : skip + days * _DAY].reshape(days, 24, 3600)
    # The level reached for 90 % of each hour is the 10th percentile of that hour.
    needed = np.quantile(grid, 1 - _FLOOR_SHARE, axis=2, method="lower").astype(np.int64)
    hourly = needed.min(axis=0)
    windows: list[FloorWindow] = []
    hour = 0
    while hour < 24:
        nodes = int(hourly[hour])
        if nodes <= result.min_nodes:
            hour += 1
            continue
        end = hour
        while end + 1 < 24 and int(hourly[end + 1]) == nodes:
            end += 1
        windows.append(FloorWindow(hour=hour, hours=end - hour + 1, nodes=nodes))
        hour = end + 1
    return windows, zone_name


def _schedule_yaml(windows: list[FloorWindow], zone_name: str) -> str:
    if not windows:
        return ""
    lines = ["schedules:"]
    for window in windows:
        lines += [
            f"  - name: daily-{window.hour:02d}h-floor",
            f"    timezone: {zone_name}",
            f'    cron: "0 {window.hour} * * *"',
            f"    duration: {window.hours}h",
            f"    min_nodes: {window.nodes}",
        ]
    return "\n".join(lines) + "\n"


def _money(value: float) -> str:
    return f"{value:,.2f}"


def _busiest_hours(run: Run, result: DryRun) -> str | None:
    unmet = run.replay.unmet
    if not unmet.any():
        return None
    zone = ZoneInfo(_zone(result))
    start = result.demand.replay_at
    seconds = np.flatnonzero(unmet)
    hours = np.array(
        [
            (start + timedelta(seconds=int(s))).astimezone(zone).hour
            for s in seconds[:: max(1, len(seconds) // 5000)]
        ]
    )
    counts = np.bincount(hours, minlength=24)
    top = np.argsort(counts)[::-1][:3]
    return ", ".join(f"{h:02d}:00" for h in sorted(int(h) for h in top if counts[h]))


def recommend(result: DryRun) -> Recommendations:
    """The report's recommendations for ``result`` (see the module docstring)."""
    fleet = result.fleet
    lines: list[str] = []
    peak_streams = int(result.demand.streams.max()) if result.demand.duration_s else 0
    peak_nodes = -(-peak_streams // fleet.streams_per_node)
    over = int(np.count_nonzero(result.demand.streams > result.max_nodes * fleet.streams_per_node))
    if peak_nodes > result.max_nodes:
        lines.append(
            f"Raise max_nodes to at least {peak_nodes}: the peak of {peak_streams} streams needs "
            f"{peak_nodes} nodes of {fleet.streams_per_node} streams, and demand was above what "
            f"{result.max_nodes} nodes serve for {over} s ({over / 3600:.1f} h)."
        )
    else:
        lines.append(
            f"max_nodes {result.max_nodes} is enough: the peak of {peak_streams} streams needs "
            f"{peak_nodes} nodes of {fleet.streams_per_node} streams"
            + (
                f", leaving {result.max_nodes - peak_nodes} to spare."
                if result.max_nodes > peak_nodes
                else ", with nothing to spare: a bigger peak would queue."
            )
        )
    windows, zone_name = floor_schedule(result)
    if result.demand.duration_s < _DAY:
        lines.append("The window is shorter than a day, so no daily floor schedule is suggested.")
    elif windows:
        spans = "; ".join(
            f"{w.hour:02d}:00–{(w.hour + w.hours) % 24:02d}:00 at least {w.nodes} nodes" for w in windows
        )
        lines.append(
            f"Floor schedule ({zone_name}): every replayed day needed {spans} for 90 % of each "
            "hour. Scheduled floors have those nodes serving before the ramp instead of booting "
            "during it (the YAML below goes under scaling.schedules)."
        )
    else:
        lines.append(
            f"No daily floor above min_nodes {result.min_nodes} is needed: on some day every hour "
            f"spent 10 % or more of its time at or below {result.min_nodes} nodes."
        )
    oracle_cost = result.oracle["cost"]
    days = result.demand.duration_s / _DAY
    for run in result.runs:
        s = run.summary
        month = s["cost"] / days * 30 if days else 0.0
        text = (
            f"{run.label}: {s['node_hours']:,.1f} node-hours, {_money(s['cost'])} over the window "
            f"(about {_money(month)} per 30 days), {s['cost_ratio']:.2f}× the oracle's "
            f"{_money(oracle_cost)}; demand waited for {s['violation_seconds']} s "
            f"({s['unmet_stream_seconds']:,} stream-seconds)"
        )
        busiest = _busiest_hours(run, result)
        text += f", mostly around {busiest} {_zone(result)}." if busiest else "."
        lines.append(text)
        hpa = result.hpa_like.summary
        if s["cost"] <= hpa["cost"] and s["violation_seconds"] <= hpa["violation_seconds"]:
            lines.append(
                f"{run.label} beats the HPA-like baseline: {_money(hpa['cost'] - s['cost'])} cheaper "
                f"with {hpa['violation_seconds'] - s['violation_seconds']} s less waiting."
            )
        elif s["cost"] <= hpa["cost"]:
            lines.append(
                f"{run.label} is {_money(hpa['cost'] - s['cost'])} cheaper than the HPA-like baseline "
                f"but lets demand wait {s['violation_seconds'] - hpa['violation_seconds']} s longer: "
                "a lower target utilisation (more headroom for bursts while nodes boot) or faster "
                "scale-out buys that back."
            )
        else:
            lines.append(
                f"{run.label} costs {_money(s['cost'] - hpa['cost'])} more than the HPA-like baseline"
                + (
                    f" and saves {hpa['violation_seconds'] - s['violation_seconds']} s of waiting."
                    if s["violation_seconds"] < hpa["violation_seconds"]
                    else "."
                )
            )
    static = result.static_peak
    lines.append(
        f"For comparison, running {static['peak_nodes']} nodes all the time (static peak) costs "
        f"{_money(static['cost'])} ({static['cost_ratio']:.2f}× the oracle) with no waiting."
    )
    return Recommendations(
        lines=tuple(lines),
        floors=tuple(windows),
        timezone=zone_name,
        schedule_yaml=_schedule_yaml(windows, zone_name),
    )
