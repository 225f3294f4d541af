"""The dry run's outputs: ``report.html`` (one self-contained page), ``summary.json`` and ``timeline.csv``.

Layout of ``DIR`` for one policy::

    report.html  summary.json  timeline.csv

and for ``--compare`` (several policies on one demand)::

    report.html  summary.json (every policy, keyed by label)  <label>/summary.json  <label>/timeline.csv

``timeline.csv`` has one row per tick: ``t_s`` (seconds from the window's start),
``demand_streams`` (the most concurrent streams at any second inside the tick), the ready, booting
and draining nodes during the tick (after the tick's moves), ``desired_nodes`` (the decision),
``capacity_streams`` (ready capacity at the tick's start: serving nodes × C plus streams finishing
on draining nodes) and ``unmet_streams`` (the most streams waiting at any second inside the tick).

Nothing in the outputs depends on the time they were written, so the same scenario and seed give
byte-identical files.
"""

from __future__ import annotations

import json
from datetime import timedelta
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from autoscaler.errors import ScenarioError
from autoscaler.simulate.fleet import tick_max
from autoscaler.simulate.recommend import Recommendations, recommend
from autoscaler.simulate.run import DryRun, Run, demand_summary
from autoscaler.simulate.scenario import ExponentialAudio, FixedAudio, LognormalAudio
from autoscaler.simulate.svg import Series, chart

TIMELINE_COLUMNS = (
    "t_s",
    "demand_streams",
    "ready_nodes",
    "booting_nodes",
    "draining_nodes",
    "desired_nodes",
    "capacity_streams",
    "unmet_streams",
)
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_STATE_COLORS = {"ready": "#2ca02c", "booting": "#ff7f0e", "draining": "#9e9e9e"}


def timeline_rows(
    run: Run, streams: np.ndarray[Any, np.dtype[np.int64]]
) -> np.ndarray[Any, np.dtype[np.int64]]:
    """The ``timeline.csv`` table of ``run`` as an integer array, one row per tick."""
    r = run.replay
    return np.column_stack(
        [
            r.tick_times,
            tick_max(streams, r.tick_s),
            r.ready,
            r.booting,
            r.draining,
            r.desired,
            r.tick_capacity,
            tick_max(r.unmet, r.tick_s),
        ]
    ).astype(np.int64)


def write_timeline(path: Path, run: Run, streams: np.ndarray[Any, np.dtype[np.int64]]) -> None:
    """Write ``timeline.csv`` for ``run``."""
    np.savetxt(
        path,
        timeline_rows(run, streams),
        fmt="%d",
        delimiter=",",
        header=",".join(TIMELINE_COLUMNS),
        comments="",
    )


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_outputs(result: DryRun, out: Path) -> list[Path]:
    """Write the report, summaries and timelines into ``out`` (created if needed); return the files.

    Raises ``ScenarioError`` when ``out`` cannot be created or written.
    """
    written: list[Path] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        compare = len(result.runs) > 1
        if compare:
            combined: dict[str, Any] = {
                "policies": {},
                "demand": demand_summary(result.demand, result.fleet.streams_per_node),
            }
            for run in result.runs:
                folder = out / run.label
                folder.mkdir(exist_ok=True)
                summary = result.summary(run)
                (folder / "summary.json").write_text(_json(summary), encoding="utf-8")
                write_timeline(folder / "timeline.csv", run, result.demand.streams)
                written += [folder / "summary.json", folder / "timeline.csv"]
                combined["policies"][run.label] = {
                    k: v for k, v in summary.items() if k not in ("baselines", "demand", "scenario")
                }
            first = result.summary(result.runs[0])
            combined["baselines"] = first["baselines"]
            combined["scenario"] = first["scenario"]
            (out / "summary.json").write_text(_json(combined), encoding="utf-8")
        else:
            run = result.runs[0]
            (out / "summary.json").write_text(_json(result.summary(run)), encoding="utf-8")
            write_timeline(out / "timeline.csv", run, result.demand.streams)
            written.append(out / "timeline.csv")
        written.append(out / "summary.json")
        (out / "report.html").write_text(render_html(result, recommend(result)), encoding="utf-8")
        written.append(out / "report.html")
    except OSError as exc:
        raise ScenarioError(f"{out}: cannot write the report: {exc.strerror or exc}") from exc
    return written


# --------------------------------------------------------------------------------------------- html
_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2430;
 background:#f6f7f9}
main{max-width:1000px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d9dde3;padding-bottom:4px}
p.lead{color:#4a5568;margin:0 0 12px}
table{border-collapse:collapse;width:100%;background:#fff;font-variant-numeric:tabular-nums}
th,td{padding:6px 8px;border-bottom:1px solid #e3e6ea;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#eef1f5;font-weight:600}tr.policy td:first-child{font-weight:600}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:0}dt{color:#4a5568}dd{margin:0}
ul.recs li{margin:6px 0}pre{background:#fff;border:1px solid #d9dde3;padding:10px;overflow:auto}
svg.chart{width:100%;height:auto;background:#fff;border:1px solid #e3e6ea;margin:6px 0 14px}
svg.chart text{font-size:11px;fill:#4a5568}svg.chart line.grid{stroke:#e8ebef;stroke-width:1}
.note{color:#4a5568;font-size:13px}
"""


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return escape(str(value))


def _summary_table(result: DryRun) -> str:
    rows = [(run.label, run.summary, "policy") for run in result.runs]
    rows += [
        ("HPA-like baseline", result.hpa_like.summary, "baseline"),
        ("static peak", result.static_peak, "baseline"),
        ("oracle (knows the future)", result.oracle, "baseline"),
    ]
    head = (
        "<tr><th>schedule</th><th>node-hours</th><th>cost</th><th>cost ÷ oracle</th><th>violation s</th>"
        "<th>unmet stream-s</th><th>peak nodes</th><th>launches</th><th>terminations</th></tr>"
    )
    body = []
    for label, s, kind in rows:
        body.append(
            f'<tr class="{kind}"><td>{escape(label)}</td><td>{_fmt(float(s["node_hours"]), 1)}</td>'
            f"<td>{_fmt(float(s['cost']), 2)}</td>"
            f"<td>{_fmt(s['cost_ratio'] and float(s['cost_ratio']), 3)}</td>"
            f"<td>{_fmt(s['violation_seconds'])}</td><td>{_fmt(s['unmet_stream_seconds'])}</td>"
            f"<td>{_fmt(s['peak_nodes'])}</td><td>{_fmt(s['launches'])}</td><td>{_fmt(s['terminations'])}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _charts(result: DryRun) -> str:
    demand = result.demand
    duration = demand.duration_s
    start = demand.replay_at
    all_runs = [*result.runs, result.hpa_like]
    capacity = [Series("demand (streams)", "#111827", demand.streams, reduce="max")]
    for index, run in enumerate(all_runs):
        capacity.append(
            Series(
                f"ready capacity: {run.label}",
                _COLORS[index % len(_COLORS)],
                run.replay.capacity,
                reduce="min",
            )
        )
    for index, run in enumerate(result.runs):
        forecast = run.replay.policy.scaling.forecast
        if forecast is not None:
            # No floor yet (under min_history, a gap) plots as 0: the forecast asked for nothing.
            floor = np.maximum(run.replay.forecast_floor, 0) * result.fleet.streams_per_node
            acted = "acting" if forecast.mode == "forecast_and_scale" else "forecast_only, not applied"
            color = _COLORS[index % len(_COLORS)]
            capacity.append(Series(f"forecast floor × C: {run.label} ({acted})", color, floor,
                                   step_s=run.replay.tick_s, reduce="max", dashed=True))
    capacity.append(
        Series(
            f"max_nodes × C = {result.max_nodes * result.fleet.streams_per_node}",
            "#9ca3af",
            np.full(2, result.max_nodes * result.fleet.streams_per_node),
            step_s=duration,
            dashed=True,
        )
    )
    parts = [
        "<h2>Demand against ready capacity</h2>",
        '<p class="note">Concurrent streams wanting service (the highest in each plotted interval) and the '
        "capacity of serving nodes (the lowest in each interval), per schedule. "
        "Where the black line is above "
        "a schedule's line, streams of that schedule waited. A dashed forecast floor is the capacity "
        "the seasonal forecast asked for one lead ahead (from the replayed past only).</p>",
        chart("Demand against ready capacity", capacity, duration_s=duration, start=start, y_label="streams"),
    ]
    parts.append("<h2>Nodes by state</h2>")
    parts.append(
        '<p class="note">Nodes serving, booting and draining over time (mean of each plotted interval); '
        "booting and draining nodes are billed but serve no new streams.</p>"
    )
    for run in all_runs:
        r = run.replay
        parts.append(f"<h3>{escape(run.label)}</h3>")
        parts.append(
            chart(
                f"Nodes by state: {run.label}",
                [
                    Series("ready", _STATE_COLORS["ready"], r.ready, step_s=r.tick_s, reduce="mean"),
                    Series("booting", _STATE_COLORS["booting"], r.booting, step_s=r.tick_s, reduce="mean"),
                    Series("draining", _STATE_COLORS["draining"], r.draining, step_s=r.tick_s, reduce="mean"),
                ],
                duration_s=duration,
                start=start,
                y_label="nodes",
                stacked=True,
            )
        )
    waiting = [
        Series(f"waiting: {run.label}", _COLORS[i % len(_COLORS)], run.replay.unmet, reduce="max")
        for i, run in enumerate(all_runs)
    ]
    parts += [
        "<h2>Waiting streams</h2>",
        '<p class="note">Streams above ready capacity (the most at any second of each plotted interval).</p>',
        chart("Waiting streams", waiting, duration_s=duration, start=start, y_label="streams waiting"),
    ]
    return "\n".join(parts)


def _forecast_facts(result: DryRun) -> list[tuple[str, str]]:
    """One line per policy with a forecast: its mode and how often its floor mattered."""
    facts = []
    for run in result.runs:
        forecast = run.summary.get("forecast")
        if not forecast:
            continue
        ticks = len(run.replay.tick_times)
        if forecast["mode"] == "forecast_and_scale":
            text = (f"forecast_and_scale (acting): raised the count on {forecast['ticks_raised']:,} of "
                    f"{ticks:,} ticks")
        else:
            text = (f"forecast_only (recorded, not applied): its floor was above the checks' count on "
                    f"{forecast['ticks_floor_above_checks']:,} of {ticks:,} ticks")
        text += f"; a floor on {forecast['ticks_with_floor']:,} ticks (none until min_history was replayed)"
        facts.append((f"forecast: {escape(run.label)}" if len(result.runs) > 1 else "forecast", escape(text)))
    return facts


def _audio_text(audio: LognormalAudio | FixedAudio | ExponentialAudio) -> str:
    if isinstance(audio, LognormalAudio):
        text = f"audio lognormal, median {audio.median:g} s, p95 {audio.p95:g} s"
    elif isinstance(audio, FixedAudio):
        return f"audio {audio.mean:g} s each"
    else:
        text = f"audio exponential, mean {audio.mean:g} s"
    return text + (f", at most {audio.max:g} s" if audio.max is not None else "")


def render_html(result: DryRun, recs: Recommendations) -> str:
    """The whole report page: inline CSS and SVG, no script, nothing fetched."""
    spec = result.scenario.spec
    demand = result.demand
    fleet = result.fleet
    end = demand.replay_at + timedelta(seconds=demand.duration_s)
    title = f"Dry run: {result.scenario.name}"
    runs = ", ".join(run.label for run in result.runs)
    scale = f"{demand.scale:.6g}" + (
        f" (peak_nodes {spec.demand.peak_nodes})" if spec.demand.peak_nodes else ""
    )
    facts = [
        ("policy" if len(result.runs) == 1 else "policies", escape(runs)),
        ("demand", escape(demand.description)),
        (
            "window",
            f"{demand.replay_at:%Y-%m-%d %H:%M} → {end:%Y-%m-%d %H:%M} UTC "
            f"({demand.duration_s / 86400:.2f} days, replay clock)",
        ),
        ("scale", escape(scale)),
        ("arrivals", _fmt(demand.arrivals)),
        (
            "peak / mean demand",
            f"{int(demand.streams.max()):,} / {float(demand.streams.mean()):,.1f} streams",
        ),
        (
            "workload",
            escape(
                f"{_audio_text(spec.workload.audio_seconds)}, real-time factor "
                f"{spec.workload.real_time_factor:g}"
            ),
        ),
        (
            "fleet",
            f"{fleet.streams_per_node} streams per node, boot {fleet.boot_s} s, "
            f"{fleet.price_per_hour:g} per node-hour ({escape(fleet.instance_type)})",
        ),
        ("pool", f"min {result.min_nodes}, max {result.max_nodes} nodes"),
        ("tick", f"{result.runs[0].replay.tick_s} s"),
        ("seed", str(spec.seed)),
        *_forecast_facts(result),
    ]
    notes = list(demand.notes)
    for run in [*result.runs, result.hpa_like]:
        notes += [f"{run.label}: {n}" for n in run.replay.notes]
    recs_html = "".join(f"<li>{escape(line)}</li>" for line in recs.lines)
    yaml_html = (
        f"<p>Suggested floors ({escape(recs.timezone)}):</p><pre>{escape(recs.schedule_yaml)}</pre>"
        if recs.schedule_yaml
        else ""
    )
    notes_html = "".join(f"<li>{escape(n)}</li>" for n in notes)
    description = f'<p class="lead">{escape(spec.description)}</p>' if spec.description else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{_CSS}</style></head>
<body><main>
<h1>{escape(title)}</h1>
{description}
<dl>{"".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)}</dl>
<h2>Summary against the baselines</h2>
{_summary_table(result)}
<p class="note">Node-hours are billed from launch to termination, boot included. Violation seconds:
seconds with demand above ready capacity. Unmet stream-seconds: streams waiting, summed over seconds.
The oracle is the cheapest schedule that never lets demand wait, knowing the future, with the same boot
delay; static peak runs the peak's nodes all the time; the HPA-like baseline is policies/hpa-like.yaml
run through the same engine.</p>
<h2>Recommendations</h2>
<ul class="recs">{recs_html}</ul>
{yaml_html}
{_charts(result)}
<h2>How this was simulated</h2>
<ul class="note">
<li>Each tick the same decision engine as the live controller decides from samples computed from the
simulated fleet; launches boot for {fleet.boot_s} s before serving; drained nodes finish their streams
(up to the policy's drain timeout) and booting victims are cancelled at once.</li>
<li>Demand is exogenous: arrivals hold a stream for audio length × real-time factor; streams above
ready capacity wait and are counted as unmet, they do not leave or retry.</li>
{notes_html}
</ul>
</main></body></html>
"""
