"""Plain-language recommendations from a dry run: the floor schedule, the max nodes, the cost.

- **Max nodes**: the peak of required nodes ``ceil(peak streams / C)`` against the policy's
  ``max_nodes`` (and how long demand was above ``max_nodes × C``).
- **Floor schedule**: for each hour of the day (in the policy's schedule time zone, else UTC), the
  nodes needed for at least 90 % of that hour on *every* replayed day; hours whose floor is above
  ``min_nodes`` become cron floors (adjacent hours with one floor merge into one window), written as
  YAML to paste under ``scaling.schedules``. Needs at least one whole day of demand.
- **Cost**: each run's bill over the window and per 30 days, against the oracle and the baselines,
  and where the waiting happened, in the policy's currency (``launch.currency``).
- **Risk options** (``options``): when the scenario's policy let demand wait, three changes are each
  replayed on the same demand, fleet and seed (measured, not estimated): a daily floor over the
  hours that held most of the waiting, a tighter target (``target × 0.8`` for target tracking,
  half the ``wait_probability`` for queueing) and a bigger warm pool. Each option states what it
  costs and what waiting it removes, in requests that waited, the p95 and worst wait, and drain
  cuts. "No floor needed" is only said when demand never waited for a minute in the window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from zoneinfo import ZoneInfo

import numpy as np

from autoscaler.policy.model import PoolPolicy, QueueingCheck, ScheduledCapacity, TargetTrackingCheck
from autoscaler.simulate.fleet import replay, with_warm_pool
from autoscaler.simulate.risk import Risk, assess
from autoscaler.simulate.run import DryRun, Run, summarize
from autoscaler.simulate.workload import ServiceLaw

_DAY = 86_400
#: A floor covers what is needed for this share of the hour.
_FLOOR_SHARE = 0.9
#: Hours of day that hold this share of the unmet stream-seconds get the risk floor.
_WAITING_SHARE = 0.8
#: Waiting below this (violation seconds over the window) is too little to call for an option.
_NEGLIGIBLE_WAIT_S = 60


@dataclass(frozen=True)
class FloorWindow:
    """One recommended floor: from ``hour`` for ``hours`` hours every day, at least ``nodes``."""

    hour: int
    hours: int
    nodes: int


@dataclass(frozen=True)
class Option:
    """A change to the scenario's policy, replayed on the same demand: what it costs and what it removes."""

    name: str
    change: str
    #: How the figures were obtained (replayed, with which change).
    how: str
    cost: float
    extra_cost: float
    node_hours: float
    risk: Risk
    base: Risk

    @property
    def removed_wait_s(self) -> int:
        """Seconds with demand above capacity that the change removes (negative: adds)."""
        return self.base.total.violation_seconds - self.risk.total.violation_seconds

    @property
    def removed_requests(self) -> int:
        """Requests that no longer wait (negative: more wait)."""
        return self.base.total.requests_waited - self.risk.total.requests_waited


@dataclass(frozen=True)
class Recommendations:
    """What the report recommends, as sentences and as a YAML snippet, with the measured options."""

    lines: tuple[str, ...]
    floors: tuple[FloorWindow, ...]
    timezone: str
    schedule_yaml: str
    options: tuple[Option, ...] = ()
    currency: str = "USD"


def schedule_zone(result: DryRun) -> str:
    """The time zone floors and per-hour figures use: the policy's first schedule's, else UTC."""
    for schedule in result.scenario.policy.scaling.schedules:
        return schedule.timezone
    return "UTC"


def floor_schedule(result: DryRun) -> tuple[list[FloorWindow], str]:
    """Per-hour floors that every replayed day needed for 90 % of the hour, above ``min_nodes``."""
    zone_name = schedule_zone(result)
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


def money(value: float, currency: str) -> str:
    """A money figure with its ISO 4217 code, e.g. ``1,206.98 USD``."""
    return f"{value:,.2f} {currency}"


def duration_text(seconds: float) -> str:
    """Seconds as a person reads them: ``45 s``, ``12.5 min``, ``4.5 h``."""
    if seconds < 120:
        return f"{seconds:,.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:,.1f} min"
    return f"{seconds / 3600:,.1f} h"


def _busiest_hours(run: Run, result: DryRun) -> str | None:
    unmet = run.replay.unmet
    if not unmet.any():
        return None
    zone = ZoneInfo(schedule_zone(result))
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


def _waiting_hours(risk: Risk) -> list[int]:
    """The fewest hours of day that hold ``_WAITING_SHARE`` of the unmet stream-seconds."""
    total = risk.total.unmet_stream_seconds
    if not total:
        return []
    order = sorted(range(24), key=lambda h: (-risk.hours[h].unmet_stream_seconds, h))
    chosen: list[int] = []
    held = 0
    for hour in order:
        if held >= _WAITING_SHARE * total or not risk.hours[hour].unmet_stream_seconds:
            break
        chosen.append(hour)
        held += risk.hours[hour].unmet_stream_seconds
    return sorted(chosen)


def risk_floor(result: DryRun, risk: Risk) -> list[FloorWindow]:
    """Floors over the hours of day that held most of the waiting: in each, the nodes that cover
    demand for 90 % of that hour's seconds across all replayed days (bursts included, unlike the
    every-day floor), above ``min_nodes`` and at most ``max_nodes``."""
    hours = _waiting_hours(risk)
    if not hours:
        return []
    zone = ZoneInfo(risk.timezone)
    local = result.demand.replay_at.astimezone(zone)
    into_day = local.hour * 3600 + local.minute * 60 + local.second
    hour_of = ((np.arange(len(result.required), dtype=np.int64) + into_day) // 3600) % 24
    windows: list[FloorWindow] = []
    for hour in hours:
        level = int(np.quantile(result.required[hour_of == hour], _FLOOR_SHARE, method="higher"))
        level = min(level, result.max_nodes)
        if level <= result.min_nodes:
            continue
        last = windows[-1] if windows else None
        if last is not None and last.hour + last.hours == hour and last.nodes == level:
            windows[-1] = FloorWindow(hour=last.hour, hours=last.hours + 1, nodes=level)
        else:
            windows.append(FloorWindow(hour=hour, hours=1, nodes=level))
    return windows


def _with_floors(policy: PoolPolicy, windows: list[FloorWindow], zone: str) -> PoolPolicy:
    extra = [
        ScheduledCapacity(name=f"risk-{w.hour:02d}h-floor", timezone=zone, cron=f"0 {w.hour} * * *",
                          duration=timedelta(hours=w.hours), min_nodes=w.nodes)
        for w in windows
    ]
    scaling = policy.scaling.model_copy(update={"schedules": [*policy.scaling.schedules, *extra]})
    return PoolPolicy.model_validate(policy.model_copy(update={"scaling": scaling}).model_dump())


def _tighter(policy: PoolPolicy) -> tuple[PoolPolicy, str] | None:
    """``policy`` with more headroom: target tracking's target × 0.8, queueing's wait probability ÷ 2."""
    checks = []
    said = None
    for check in policy.scaling.checks:
        changed = check
        if isinstance(check, TargetTrackingCheck) and said is None:
            target = round(check.target * 0.8, 3)
            said = f"check {check.name!r}: target {check.target:g} → {target:g}"
            changed = check.model_copy(update={"target": target})
        elif isinstance(check, QueueingCheck) and said is None and check.service_level.wait_probability:
            was = check.service_level.wait_probability
            said = f"check {check.name!r}: wait_probability {was:g} → {was / 2:g}"
            changed = check.model_copy(
                update={"service_level": check.service_level.model_copy(update={"wait_probability": was / 2})}
            )
        checks.append(changed)
    if said is None:
        return None
    scaling = policy.scaling.model_copy(update={"checks": checks})
    return PoolPolicy.model_validate(policy.model_copy(update={"scaling": scaling}).model_dump()), said


def risk_options(result: DryRun, run: Run, base: Risk) -> list[Option]:
    """Each option replayed on ``result``'s demand, fleet and seed with ``run``'s policy changed."""
    if base.total.violation_seconds < _NEGLIGIBLE_WAIT_S:
        return []
    policy = run.replay.policy
    zone = base.timezone
    law = ServiceLaw(result.scenario.spec.workload)
    changes: list[tuple[str, str, PoolPolicy]] = []
    windows = risk_floor(result, base)
    if windows:
        spans = ", ".join(f"{w.hour:02d}:00–{(w.hour + w.hours) % 24:02d}:00 ≥ {w.nodes}" for w in windows)
        changes.append(("floor on the waiting hours", f"scaling.schedules += {spans} nodes ({zone})",
                        _with_floors(policy, windows, zone)))
    tighter = _tighter(policy)
    if tighter is not None:
        changes.append(("more headroom", tighter[1], tighter[0]))
    warm = policy.warm_pool
    size = warm.size if warm is not None and isinstance(warm.size, int) else 0
    bigger = size + max(2, size // 2)
    changes.append(("bigger warm pool", f"warm_pool.size {size} → {bigger}", with_warm_pool(policy, bigger)))
    options = []
    for name, change, changed in changes:
        replayed = replay(f"{run.label}+{name}", changed, result.demand, run.replay.fleet, law,
                          tick_s=run.replay.tick_s, seed=result.scenario.spec.seed)
        figures = summarize(replayed, result.demand, int(run.summary["oracle_node_seconds"]))
        options.append(Option(
            name=name,
            change=change,
            how="measured: the policy with this change replayed on the same demand, fleet and seed",
            cost=float(figures["cost"]),
            extra_cost=float(figures["cost"]) - float(run.summary["cost"]),
            node_hours=float(figures["node_hours"]),
            risk=assess(replayed, result.demand.replay_at, zone),
            base=base,
        ))
    return options


def _option_line(option: Option, currency: str) -> str:
    after, before = option.risk.total, option.base.total
    verb = "costs" if option.extra_cost >= 0 else "saves"
    return (
        f"Option, {option.name} ({option.change}): {verb} {money(abs(option.extra_cost), currency)} over "
        f"the window; waiting {duration_text(before.violation_seconds)} → "
        f"{duration_text(after.violation_seconds)}, "
        f"requests that waited {before.requests_waited:,} → {after.requests_waited:,}, worst wait "
        f"{duration_text(before.wait_max_s)} → {duration_text(after.wait_max_s)}, worst queue "
        f"{before.queue_max} → {after.queue_max}, cut at the drain timeout {before.drain_cuts} → "
        f"{after.drain_cuts} ({option.how})."
    )


def _drain_cut_line(result: DryRun, run: Run, risk: Risk) -> str | None:
    """What the drain timeout cut, against how long the workload's transcriptions run (from its law)."""
    cuts = risk.total.drain_cuts
    if not cuts:
        return None
    timeout = result.fleet.drain_timeout_s
    if timeout is None:
        timeout = int(run.replay.policy.drain.timeout.total_seconds())
    law = ServiceLaw(result.scenario.spec.workload)
    share = float(law.survival(timeout + 1)[timeout])
    return (
        f"{cuts:,} transcriptions were cut when scale-in drains hit the {timeout} s drain timeout. By the "
        f"workload's law, {share:.1%} of transcriptions run longer than {timeout} s and 1 in 1,000 runs "
        f"{duration_text(law.quantile_s(0.999))} or more: a drain.timeout that long (or a slower "
        "scale-in) would spare them; estimated from the law, not replayed."
    )


def recommend(
    result: DryRun, risks: dict[str, Risk] | None = None, *, measure: bool = True
) -> Recommendations:
    """The report's recommendations for ``result`` (see the module docstring).

    ``risks`` (by run label) are the runs' risk figures when already computed; ``measure`` replays
    the risk options for the scenario's (first) policy.
    """
    fleet = result.fleet
    currency = fleet.currency
    zone_name = schedule_zone(result)
    risks = dict(risks or {})
    for run in result.runs:
        if run.label not in risks:
            risks[run.label] = assess(run.replay, result.demand.replay_at, zone_name)
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
    first = result.runs[0]
    base = risks[first.label]
    windows, zone_name = floor_schedule(result)
    waited = base.total.violation_seconds
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
    elif waited < _NEGLIGIBLE_WAIT_S:
        lines.append(
            f"No daily floor above min_nodes {result.min_nodes} is needed: demand waited only "
            f"{waited} s in the window, and on some day every hour spent 10 % or more of its time at "
            f"or below {result.min_nodes} nodes."
        )
    else:
        lines.append(
            f"No floor is needed on every day alike (on some day every hour spent 10 % or more of its time "
            f"at or below {result.min_nodes} nodes), but {first.label} let demand wait "
            f"{duration_text(waited)}: {base.total.requests_waited:,} requests waited, p95 "
            f"{duration_text(base.total.wait_p95_s)}, worst {duration_text(base.total.wait_max_s)}, up to "
            f"{base.total.queue_max} streams queued, and {base.total.drain_cuts} transcriptions were cut "
            "at the drain timeout. The options below weigh what removing that waiting costs."
        )
    options = risk_options(result, first, base) if measure else []
    lines += [_option_line(option, currency) for option in options]
    cut_line = _drain_cut_line(result, first, base)
    if cut_line:
        lines.append(cut_line)
    oracle_cost = result.oracle["cost"]
    days = result.demand.duration_s / _DAY
    for run in result.runs:
        s = run.summary
        risk = risks[run.label].total
        month = s["cost"] / days * 30 if days else 0.0
        text = (
            f"{run.label}: {s['node_hours']:,.1f} node-hours, {money(s['cost'], currency)} over the window "
            f"(about {money(month, currency)} per 30 days), {s['cost_ratio']:.2f}× the oracle's "
            f"{money(oracle_cost, currency)}; demand waited for {s['violation_seconds']:,} s "
            f"({duration_text(s['violation_seconds'])}, {s['unmet_stream_seconds']:,} stream-seconds): "
            f"{risk.requests_waited:,} requests waited, p95 {duration_text(risk.wait_p95_s)}, worst "
            f"{duration_text(risk.wait_max_s)}, up to {risk.queue_max} queued; {risk.drain_cuts} cut at the "
            "drain timeout"
        )
        busiest = _busiest_hours(run, result)
        text += f"; the waiting was mostly around {busiest} {schedule_zone(result)}." if busiest else "."
        lines.append(text)
        hpa = result.hpa_like.summary
        if s["cost"] <= hpa["cost"] and s["violation_seconds"] <= hpa["violation_seconds"]:
            lines.append(
                f"{run.label} beats the HPA-like baseline: "
                f"{money(hpa['cost'] - s['cost'], currency)} cheaper "
                f"with {hpa['violation_seconds'] - s['violation_seconds']:,} s less waiting."
            )
        elif s["cost"] <= hpa["cost"]:
            lines.append(
                f"{run.label} is {money(hpa['cost'] - s['cost'], currency)} cheaper than the HPA-like "
                "baseline but lets demand wait "
                f"{s['violation_seconds'] - hpa['violation_seconds']:,} s longer: "
                "a lower target utilisation (more headroom for bursts while nodes boot) or faster "
                "scale-out buys that back."
            )
        else:
            lines.append(
                f"{run.label} costs {money(s['cost'] - hpa['cost'], currency)} more than the HPA-like "
                "baseline"
                + (
                    f" and saves {hpa['violation_seconds'] - s['violation_seconds']:,} s of waiting."
                    if s["violation_seconds"] < hpa["violation_seconds"]
                    else "."
                )
            )
    static = result.static_peak
    lines.append(
        f"For comparison, running {static['peak_nodes']} nodes all the time (static peak) costs "
        f"{money(static['cost'], currency)} ({static['cost_ratio']:.2f}× the oracle) with no waiting."
    )
    return Recommendations(
        lines=tuple(lines),
        floors=tuple(windows),
        timezone=zone_name,
        schedule_yaml=_schedule_yaml(windows, zone_name),
        options=tuple(options),
        currency=currency,
    )
