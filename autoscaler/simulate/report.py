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

``report.html`` is rendered from ``templates/report.html.j2`` (Jinja2, autoescaped) with figures
from ``plots`` (matplotlib, inline SVG); every figure it shows is computed here, in ``risk`` (what
users would have seen: waits, queue, drain cuts per day and hour) and in ``recommend``. Each
``summary.json`` carries the run's ``risk`` too.

Nothing in the outputs depends on the time they were written, so the same scenario and seed give
byte-identical files.
"""

from __future__ import annotations

import functools
import json
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from autoscaler.errors import ScenarioError
from autoscaler.simulate.fleet import tick_max
from autoscaler.simulate.recommend import Recommendations, duration_text, money, recommend, schedule_zone
from autoscaler.simulate.risk import Risk, assess, risk_summary
from autoscaler.simulate.run import DryRun, Run, demand_summary
from autoscaler.simulate.scenario import ExponentialAudio, FixedAudio, LognormalAudio

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


def write_outputs(
    result: DryRun, out: Path, *, measure: bool = True, risks: dict[str, Risk] | None = None
) -> list[Path]:
    """Write the report, summaries and timelines into ``out`` (created if needed); return the files.

    ``measure`` replays the report's risk options (see ``recommend``); off, the report has none.
    ``risks`` are ``risk_of(result)`` when the caller already has them.

    Raises ``ScenarioError`` when ``out`` cannot be created or written.
    """
    written: list[Path] = []
    if risks is None:
        risks = risk_of(result)

    def summary_of(run: Run) -> dict[str, Any]:
        return result.summary(run) | {"risk": risk_summary(risks[run.label])}

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
                summary = summary_of(run)
                (folder / "summary.json").write_text(_json(summary), encoding="utf-8")
                write_timeline(folder / "timeline.csv", run, result.demand.streams)
                written += [folder / "summary.json", folder / "timeline.csv"]
                combined["policies"][run.label] = {
                    k: v for k, v in summary.items() if k not in ("baselines", "demand", "scenario")
                }
            first = summary_of(result.runs[0])
            combined["baselines"] = first["baselines"]
            combined["scenario"] = first["scenario"]
            (out / "summary.json").write_text(_json(combined), encoding="utf-8")
        else:
            run = result.runs[0]
            (out / "summary.json").write_text(_json(summary_of(run)), encoding="utf-8")
            write_timeline(out / "timeline.csv", run, result.demand.streams)
            written.append(out / "timeline.csv")
        written.append(out / "summary.json")
        page = render_html(result, recommend(result, risks, measure=measure), risks)
        (out / "report.html").write_text(page, encoding="utf-8")
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
        facts.append((f"forecast: {run.label}" if len(result.runs) > 1 else "forecast", text))
    return facts


def _audio_text(audio: LognormalAudio | FixedAudio | ExponentialAudio) -> str:
    if isinstance(audio, LognormalAudio):
        text = f"audio lognormal, median {audio.median:g} s, p95 {audio.p95:g} s"
    elif isinstance(audio, FixedAudio):
        return f"audio {audio.mean:g} s each"
    else:
        text = f"audio exponential, mean {audio.mean:g} s"
    return text + (f", at most {audio.max:g} s" if audio.max is not None else "")


_EXTRA_CSS = """
main{max-width:1240px}svg.figure{width:100%;height:auto;display:block}
div.figure{background:#fff;border:1px solid #e3e6ea;margin:6px 0 14px;padding:4px}
tr.bad td{background:#fdecea}td.text{text-align:left}table.options td:nth-child(2){text-align:left}
tr.baseline td{color:#4a5568}
"""


@functools.cache
def _templates() -> Environment:
    """The report's Jinja2 environment (built once, on first use)."""
    return Environment(
        loader=PackageLoader("autoscaler.simulate", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def _number(value: Any, digits: int = 0) -> str:
    """A table figure: thousands separators, ``–`` for none."""
    if value is None:
        return "–"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{float(value):,.{digits}f}"


def risk_of(result: DryRun) -> dict[str, Risk]:
    """Every replayed schedule's risk (the runs and the HPA-like baseline), by label."""
    zone = schedule_zone(result)
    runs = [*result.runs, result.hpa_like]
    return {run.label: assess(run.replay, result.demand.replay_at, zone) for run in runs}


def _days(result: DryRun, risk: Risk) -> list[tuple[str, int, int, float]]:
    """(label, first second, length, local hour it starts at) of each calendar day of the window."""
    out = []
    lo = 0
    length = result.demand.duration_s
    zone = ZoneInfo(risk.timezone)
    local = result.demand.replay_at.astimezone(zone)
    into = local.hour * 3600 + local.minute * 60 + local.second
    first = min(length, (86_400 - into) % 86_400 or 86_400)
    for row in risk.days:
        hi = first if lo == 0 else min(length, lo + 86_400)
        out.append((row.label.split(" (")[0], lo, hi - lo, into / 3600 if lo == 0 else 0.0))
        lo = hi
    return out


def _figures(result: DryRun, risks: dict[str, Risk]) -> dict[str, Markup | str]:
    """The report's figures as inline SVG: whole window, day strips, worst day and worst hour."""
    # Imported here: matplotlib takes a second to load, and the sweep imports this module for its CSS.
    from autoscaler.simulate.plots import Line, day_strips, timeline

    demand = result.demand
    start = demand.replay_at
    runs = [*result.runs, result.hpa_like]
    cap = result.max_nodes * result.fleet.streams_per_node
    capacity = [Line(f"ready capacity: {r.label}", r.replay.capacity) for r in runs]
    for r in result.runs:
        forecast = r.replay.policy.scaling.forecast
        if forecast is not None:
            # No floor yet (under min_history, a gap) plots as 0: the forecast asked for nothing.
            floor = np.maximum(r.replay.forecast_floor, 0) * result.fleet.streams_per_node
            acted = "acting" if forecast.mode == "forecast_and_scale" else "forecast_only, not applied"
            capacity.append(Line(f"forecast floor × C: {r.label} ({acted})", floor, "max", r.replay.tick_s))
    waiting = [Line(f"waiting: {r.label}", r.replay.unmet, "max") for r in runs]
    reference = result.runs[0].replay.capacity
    difference = (
        [Line(f"{r.label} − {result.runs[0].label}", r.replay.capacity - reference, "mean") for r in runs[1:]]
        if len(result.runs) > 1
        else []
    )
    states = [
        (r.label, Line("serving", r.replay.ready, "mean", r.replay.tick_s),
         Line("booting", r.replay.booting, "mean", r.replay.tick_s),
         Line("draining", r.replay.draining, "mean", r.replay.tick_s))
        for r in runs
    ]
    risk = risks[result.runs[0].label]
    zone = risk.timezone
    # A window of a day or less is its own worst day: one figure, with the nodes by state, says it all.
    short = demand.duration_s <= 86_400
    whole = timeline(title="The whole window", start=start, lo=0, hi=demand.duration_s, demand=demand.streams,
                     capacity=capacity, waiting=waiting, difference=difference, ceiling=cap, parts=2_400,
                     zone=zone, prefix="whole", states=states if short else ())
    strips = (
        day_strips(title=f"Day by day: {result.runs[0].label}", start=start, days=_days(result, risk),
                   demand=demand.streams, capacity=Line(result.runs[0].label, reference),
                   unmet=result.runs[0].replay.unmet)
        if demand.duration_s >= 2 * 86_400
        else ""
    )
    lo, length = risk.worst_day
    day = "" if short else timeline(
        title=f"The worst day: {risk.worst_day_label}", start=start, lo=lo, hi=lo + length,
        demand=demand.streams, capacity=capacity[: len(runs)], waiting=waiting, difference=difference,
        states=states, ceiling=cap, zone=zone, prefix="day")
    lo, length = risk.worst_hour
    hour = timeline(title=f"The worst hour: {risk.worst_hour_label}", start=start, lo=lo, hi=lo + length,
                    demand=demand.streams, capacity=capacity[: len(runs)], waiting=waiting,
                    difference=difference, ceiling=cap, parts=3_600, zone=zone, prefix="hour")
    return {"window_svg": Markup(whole), "strips_svg": Markup(strips) if strips else "",
            "worst_day_svg": Markup(day) if day else "", "worst_hour_svg": Markup(hour)}


def render_html(result: DryRun, recs: Recommendations, risks: dict[str, Risk] | None = None) -> str:
    """The whole report page from ``templates/report.html.j2``: inline CSS and SVG, no script."""
    risks = risks if risks is not None else risk_of(result)
    spec = result.scenario.spec
    demand = result.demand
    fleet = result.fleet
    currency = fleet.currency
    end = demand.replay_at + timedelta(seconds=demand.duration_s)
    runs = ", ".join(run.label for run in result.runs)
    scale = f"{demand.scale:.6g}" + (
        f" (peak_nodes {spec.demand.peak_nodes})" if spec.demand.peak_nodes else ""
    )
    facts = [
        ("policy" if len(result.runs) == 1 else "policies", runs),
        ("demand", demand.description),
        ("window", f"{demand.replay_at:%Y-%m-%d %H:%M} → {end:%Y-%m-%d %H:%M} UTC "
                   f"({demand.duration_s / 86400:.2f} days, replay clock)"),
        ("scale", scale),
        ("arrivals", _number(demand.arrivals)),
        ("peak / mean demand",
         f"{int(demand.streams.max()):,} / {float(demand.streams.mean()):,.1f} streams"),
        ("workload", f"{_audio_text(spec.workload.audio_seconds)}, real-time factor "
                     f"{spec.workload.real_time_factor:g}"),
        ("fleet", f"{fleet.streams_per_node} streams per node, boot {fleet.boot_s} s, "
                  f"{money(fleet.price_per_hour, currency)} per node-hour ({fleet.instance_type})"),
        ("pool", f"min {result.min_nodes}, max {result.max_nodes} nodes"),
        ("tick", f"{result.runs[0].replay.tick_s} s"),
        ("seed", str(spec.seed)),
        *_forecast_facts(result),
    ]
    notes = list(demand.notes)
    for run in [*result.runs, result.hpa_like]:
        notes += [f"{run.label}: {n}" for n in run.replay.notes]
    headline = []
    for run, kind in [*((r, "policy") for r in result.runs), (result.hpa_like, "baseline")]:
        risk = risks[run.label]
        label = "HPA-like baseline" if run is result.hpa_like else run.label
        headline.append({"label": label, "kind": kind, "cost": run.summary["cost"], "risk": risk.total,
                         "worst_day": risk.worst_day_label if risk.total.violation_seconds else "–",
                         "worst_hour": risk.worst_hour_label if risk.total.violation_seconds else "–"})
    summary_rows = [{"label": run.label, "s": run.summary, "kind": "policy"} for run in result.runs]
    summary_rows += [
        {"label": "HPA-like baseline", "s": result.hpa_like.summary, "kind": "baseline"},
        {"label": "static peak", "s": result.static_peak, "kind": "baseline"},
        {"label": "oracle (knows the future)", "s": result.oracle, "kind": "baseline"},
    ]
    if result.oracle_warm is not None:
        summary_rows.append({"label": "oracle with warm starts", "s": result.oracle_warm, "kind": "baseline"})
    summary_rows += [
        {"label": f"warm pool {run.summary['warm_pool_size']}"
         + (" (recommended)" if run.summary["warm_pool_size"] == result.recommended_warm_size else ""),
         "s": run.summary, "kind": "policy"}
        for run in result.warm_frontier
    ]
    tables = [{"label": run.label, "risk": risks[run.label]} for run in [*result.runs, result.hpa_like]]
    reference = result.runs[0].label
    ref_risk = risks[reference]
    env = _templates().overlay()
    env.filters["money"] = lambda v, signed=False: (
        "–" if v is None else (f"{float(v):+,.2f}" if signed else f"{float(v):,.2f}")
    )
    env.filters["number"] = _number
    env.filters["duration"] = lambda v: duration_text(float(v)) if v else "0 s"
    return env.get_template("report.html.j2").render(
        title=f"Dry run: {result.scenario.name}",
        description=spec.description,
        css=Markup(_CSS),
        extra_css=Markup(_EXTRA_CSS),
        facts=facts,
        currency=currency,
        headline=headline,
        recs=recs,
        reference=reference,
        base_risk=ref_risk.total,
        summary_rows=summary_rows,
        compare=len(result.runs) > 1,
        worst_day_label=ref_risk.worst_day_label,
        worst_hour_label=ref_risk.worst_hour_label,
        risk_tables=tables,
        boot_s=fleet.boot_s,
        still_waiting=ref_risk.still_waiting,
        notes=notes,
        **_figures(result, risks),
    )
