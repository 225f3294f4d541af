"""The decision engine: a pure function of (policy, samples, nodes, memory, now[, forecast]).

It does no I/O and reads no clock. The live controller and the dry-run simulator both call
``decide``; the only state it keeps between ticks is the ``EngineMemory`` it returns, which the
caller stores and hands back next tick.

``decide`` runs ``STEPS`` in order on one ``Draft``; each step is a small function that reads the
draft, changes the count it is responsible for and appends its own ``Reason``:

1. ``vote`` — each check turns its sample into a recommended node count (``policy.checks``). A
   check with no data (missing, ``None``, NaN, infinite, an error) votes *hold*.
2. ``combine`` — the largest recommendation wins; *hold* is the current count, so scale-out beats
   hold beats scale-in. If any check had no data the result is never below the current count.
3. ``missing_data_fallback`` — after ``on_missing_data.after_ticks`` blind ticks: ``hold``,
   ``keep_at_least`` N or ``fixed`` N (never below the current count while data is missing).
4. ``look_ahead`` — the trend of a sizing check projected one boot time ahead; may add up to
   ``max_nodes_per_tick`` nodes, never removes one.
5. ``forecast_floor`` — the seasonal forecast's need ``lead`` ahead raises the count
   (``forecast_and_scale``) or is only recorded (``forecast_only``); never removes a node.
6. ``stabilize`` — Kubernetes HPA's windows: scale-out no higher than the lowest recommendation of
   its window, scale-in no lower than the highest of its window. Like HPA, a fresh memory is seeded
   with the current count, so a controller that just started never scales in on its first tick.
7. ``cooldown`` — no move in a direction this soon after the last one.
8. ``rate_limit`` — at most N nodes or P % per period, computed from the count at the start of the
   period as HPA does.
9. ``bound`` — open scheduled floors (``boot_lead`` ahead) and ceilings, then ``min_nodes`` /
   ``max_nodes``; bounds are absolute and override cooldowns and rate limits.
10. ``protect`` — names nodes tagged ``autoscaler:do-not-disrupt`` (never drained, replaced or
    expired) and nodes past ``max_node_lifetime`` (replaced like outdated ones).
11. ``plan_moves`` — launches (capped by ``max_launching``), victims in victim order, and the rolling
    replacement of outdated or expired nodes under the disruption budget.
12. ``warm_pool`` — launches become starts of up-to-date warm (stopped) instances first, cold
    launches only for the rest; outdated warm instances are discarded, never started; the pool is
    kept at its size by preparing instances (cold launches that are stopped once healthy) and by
    discarding any beyond it.
13. ``pause`` — a paused pool records the planned moves in the trail and drops them.

``Decision.desired`` is the target after step 9 (always within ``[min_nodes, max_nodes]``);
``launch`` and ``victims`` are the moves taken now toward it and can fall short of it (step 11),
and are none while the pool is paused (step 13).
Booting (and launching, and starting) nodes count toward the current count; draining nodes do not,
nor do warm-pool nodes (preparing or stopped): they are an input of step 12 only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from statistics import median

from pydantic import BaseModel, ConfigDict, Field

from autoscaler.domain import DO_NOT_DISRUPT_TAG, Decision, Lifecycle, Node, Reason, Sample
from autoscaler.policy.checks import (
    EPSILON,
    ZERO,
    ceil_,
    queueing,
    seconds,
    size_for_demand,
    step_bands,
    target_tracking,
)
from autoscaler.policy.forecast import Forecast
from autoscaler.policy.model import (
    DirectionBehavior,
    PoolPolicy,
    QueueingCheck,
    TargetTrackingCheck,
)
from autoscaler.policy.schedule import is_open


class EngineMemory(BaseModel):
    """What the engine remembers between ticks (JSON-serialisable; the store keeps it per pool)."""

    model_config = ConfigDict(extra="ignore")

    recommendations: list[tuple[datetime, int]] = Field(
        default_factory=list, description="(time, recommended count) for stabilization windows."
    )
    scale_events: list[tuple[datetime, int]] = Field(
        default_factory=list, description="(time, signed node delta) for rate-limit periods."
    )
    last_scale_out: datetime | None = None
    last_scale_in: datetime | None = None
    streaks: dict[str, int] = Field(default_factory=dict, description="Consecutive ticks per step band.")
    replacing: int = Field(
        default=0, description="Rollout replacements launched whose outdated node is not yet drained."
    )
    missing_ticks: int = Field(default=0, description="Consecutive ticks in which some check had no data.")
    seed: tuple[datetime, int] | None = Field(
        default=None, description="(first tick, count then): HPA's seed of the scale-in window."
    )
    trend: list[tuple[datetime, float]] = Field(
        default_factory=list, description="(time, value) of the look-ahead's check over its window."
    )


@dataclass(frozen=True)
class Evaluation:
    """The engine's answer: the decision, and the memory to pass to the next tick."""

    decision: Decision
    memory: EngineMemory


# Lifecycle members as module constants for ``Draft.start``'s loop over every node of every tick.
_SERVING, _BOOTING, _LAUNCHING = Lifecycle.SERVING, Lifecycle.BOOTING, Lifecycle.LAUNCHING
_STARTING, _DRAINING, _STOPPED, _PREPARING = (
    Lifecycle.STARTING, Lifecycle.DRAINING, Lifecycle.STOPPED, Lifecycle.PREPARING
)


def trusted_memory(values: dict[str, object]) -> EngineMemory:
    """``EngineMemory.model_construct(**values)`` for ``values`` that name every field, in field order.

    What ``model_construct`` does for such values (no validation, every field set), without its
    per-field loop over aliases and defaults: a dry run builds one memory per tick, 80,640 of them
    for two weeks.
    """
    memory = EngineMemory.__new__(EngineMemory)
    object.__setattr__(memory, "__dict__", values)
    object.__setattr__(memory, "__pydantic_fields_set__", set(values))
    object.__setattr__(memory, "__pydantic_extra__", None)
    object.__setattr__(memory, "__pydantic_private__", None)
    return memory


@dataclass(slots=True)
class Draft:
    """The decision being built: inputs, the count so far, and the reasons each step added.

    ``current`` (serving + booting, less rollout surge) is fixed by ``Draft.start``; ``combined``
    is the checks' answer after steps 1-5; ``target`` is what stabilisation, cooldowns, rate limits
    and bounds (steps 6-9) make of it; ``launch`` and ``victims`` are the moves of step 10.
    """

    policy: PoolPolicy
    samples: Mapping[str, Sample]
    memory: EngineMemory
    now: datetime
    forecast: Forecast | None
    serving: list[Node]
    booting: list[Node]
    draining: int
    outdated: list[Node]
    replacing: int
    current: int
    reasons: list[Reason] = field(default_factory=list)
    votes: list[tuple[int, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    streaks: dict[str, int] = field(default_factory=dict)
    missing_ticks: int = 0
    combined: int = 0
    winner: str = ""
    target: int = 0
    history: list[tuple[datetime, int]] = field(default_factory=list)
    seed: tuple[datetime, int] | None = None
    trend: list[tuple[datetime, float]] = field(default_factory=list)
    events: list[tuple[datetime, int]] = field(default_factory=list)
    launch: int = 0
    victims: tuple[str, ...] = ()
    warm: list[Node] = field(default_factory=list)
    preparing: list[Node] = field(default_factory=list)
    draining_nodes: list[Node] = field(default_factory=list)
    starts: tuple[str, ...] = ()
    prepare: int = 0
    discard: tuple[str, ...] = ()
    warm_target: int = 0
    scaling_launch: int = 0
    scaling_victims: tuple[str, ...] = ()
    next_replacing: int = 0

    @property
    def ready(self) -> int:
        """Serving nodes."""
        return len(self.serving)

    @classmethod
    def start(
        cls, policy: PoolPolicy, samples: Mapping[str, Sample], nodes: Sequence[Node], memory: EngineMemory,
        now: datetime, forecast: Forecast | None,
    ) -> Draft:
        """Sort the nodes by lifecycle and work out the current count."""
        serving: list[Node] = []
        booting: list[Node] = []
        warm: list[Node] = []
        preparing: list[Node] = []
        draining_nodes: list[Node] = []
        # Launched or started but not yet serving: capacity on the way, not added twice. Terminated
        # nodes are in no list. (A dict of the lists: reading enum members per node was most of this.)
        lists = {_SERVING: serving, _BOOTING: booting, _LAUNCHING: booting, _STARTING: booting,
                 _DRAINING: draining_nodes, _STOPPED: warm, _PREPARING: preparing}
        for node in nodes:
            bucket = lists.get(node.lifecycle)
            if bucket is not None:
                bucket.append(node)
        draining = len(draining_nodes)
        # Replacements of outdated nodes (a rollout) run on top of the pool's size: they do not count
        # toward it, or the surge would become permanent capacity through the "hold" vote.
        outdated = [n for n, why in zip(serving, _outdated_each(serving, policy, now), strict=True) if why]
        replacing = min(memory.replacing, len(outdated), len(serving) + len(booting) - len(outdated))
        current = len(serving) + len(booting) - replacing
        return cls(policy=policy, samples=samples, memory=memory, now=now, forecast=forecast,
                   serving=serving, booting=booting, draining=draining, outdated=outdated,
                   replacing=replacing, current=current, combined=current, target=current,
                   warm=warm, preparing=preparing, draining_nodes=draining_nodes)

    def note(self, kind: str, name: str, message: str, **detail: object) -> None:
        """Append one reason to the trail."""
        self.reasons.append(Reason(kind, name, message, detail))


Step = Callable[[Draft], None]


# ------------------------------------------------------------------------------------------------ 1-3
def vote(d: Draft) -> None:
    """Each check votes a node count from its sample; no data votes hold and is remembered."""
    behavior = d.policy.scaling.behavior
    capacity = d.serving + d.booting
    for check in d.policy.scaling.checks:
        sample = d.samples.get(check.name)
        if sample is None or sample.value is None or not math.isfinite(sample.value):
            why = "no sample" if sample is None else (sample.error or f"value {sample.value}")
            d.missing.append(check.name)
            d.note("check", check.name, f"no data ({why}); votes hold",
                   query=check.query, value=None, error=why, vote="hold", recommendation=d.current)
            continue
        recommendation: int | None
        if isinstance(check, TargetTrackingCheck):
            recommendation, reason = target_tracking(check, sample.value, d.ready, d.current, behavior)
        elif isinstance(check, QueueingCheck):
            recommendation, reason = queueing(d.policy, check, sample.value, capacity, d.current)
        else:
            recommendation, reason = step_bands(check, sample.value, ready=d.ready, current=d.current,
                                                old_streaks=d.memory.streaks, new_streaks=d.streaks)
        d.reasons.append(reason)
        if recommendation is not None:
            d.votes.append((recommendation, check.name))


def combine(d: Draft) -> None:
    """The largest recommendation wins (hold = current); missing data never lets the count fall."""
    # max() of the votes: a hold vote equals ``current``, so out > hold > in falls out of it. No
    # vote at all (every check abstained) is a hold.
    d.combined, d.winner = max(d.votes) if d.votes else (d.current, "")
    if d.missing and d.combined < d.current:
        d.note("fallback", "missing-data",
               f"no data from {', '.join(d.missing)}: scale-in to {d.combined} blocked; "
               "missing data never removes a node",
               missing=list(d.missing), before=d.combined, after=d.current)
        d.combined = d.current


def missing_data_fallback(d: Draft) -> None:
    """After K consecutive blind ticks apply ``on_missing_data`` (never below the current count)."""
    d.missing_ticks = d.memory.missing_ticks + 1 if d.missing else 0
    fallback = d.policy.scaling.on_missing_data
    if not d.missing or d.missing_ticks < fallback.after_ticks:
        return
    before = d.combined
    if fallback.action == "keep_at_least":
        assert fallback.nodes is not None
        d.combined = max(d.combined, fallback.nodes)
        message = f"no data for {d.missing_ticks} ticks: keep at least {fallback.nodes} nodes"
    elif fallback.action == "fixed":
        assert fallback.nodes is not None
        d.combined = max(fallback.nodes, d.current)
        message = f"no data for {d.missing_ticks} ticks: fixed at {fallback.nodes} nodes"
        if fallback.nodes < d.current:
            message += f", but missing data never removes a node: holds at {d.current}"
    else:
        message = f"no data for {d.missing_ticks} ticks: hold (checks with data may still scale out)"
    d.note("fallback", fallback.action, message, missing_ticks=d.missing_ticks,
           after_ticks=fallback.after_ticks, before=before, after=d.combined)


# ------------------------------------------------------------------------------------------------ 4-5
def _lead(policy: PoolPolicy, explicit: timedelta | None) -> timedelta:
    if explicit is not None:
        return explicit
    scaling = policy.scaling
    return scaling.boot_lead if scaling.boot_lead is not None else policy.health.boot_timeout


def _sizing_check(policy: PoolPolicy, name: str) -> QueueingCheck | TargetTrackingCheck:
    check = next(c for c in policy.scaling.checks if c.name == name)
    assert isinstance(check, QueueingCheck | TargetTrackingCheck)  # the model validates the kind
    return check


def theil_sen_slope(points: Sequence[tuple[float, float]]) -> float:
    """The median of the slopes between every pair of points: one outlier cannot move it."""
    slopes = [(v2 - v1) / (t2 - t1) for i, (t1, v1) in enumerate(points) for t2, v2 in points[i + 1:]
              if t2 > t1]
    return median(slopes) if slopes else 0.0


def look_ahead(d: Draft) -> None:
    """Size for the demand one boot time ahead, from the recent trend of the sizing check."""
    config = d.policy.scaling.look_ahead
    if config is None:
        return
    sample = d.samples.get(config.check)
    since = d.now - config.window
    d.trend = [(t, v) for t, v in d.memory.trend if t > since and t < d.now]
    if sample is None or not sample.has_data:
        return  # no data: the vote step said so; a trend of old points is not projected alone
    assert sample.value is not None
    d.trend.append((d.now, sample.value))
    if len(d.trend) < 3:
        return
    origin = d.trend[0][0]
    slope = theil_sen_slope([((t - origin).total_seconds(), v) for t, v in d.trend])
    if slope <= 0:
        return
    horizon = _lead(d.policy, config.horizon)
    # The level is the median of the last three values: a single spiking tick does not set it.
    level = median(v for _, v in d.trend[-3:])
    projected = level + slope * seconds(horizon)
    check = _sizing_check(d.policy, config.check)
    need = size_for_demand(d.policy, check, projected, d.serving + d.booting)
    if need <= d.combined:
        return
    raised = min(need, d.combined + config.max_nodes_per_tick)
    d.note("look-ahead", config.check,
           f"{config.check} rises {slope * 60:.2f}/min: {projected:.1f} expected in {seconds(horizon):g}s "
           f"needs {need} nodes; raises {d.combined} to {raised}"
           + (f" (at most +{config.max_nodes_per_tick} a tick)" if raised < need else ""),
           slope_per_s=slope, level=level, projected=projected, horizon_s=seconds(horizon), need=need,
           before=d.combined, after=raised)
    d.combined = raised


def forecast_floor(d: Draft) -> None:
    """Raise the count to the seasonal forecast's need ``lead`` ahead (or only record it)."""
    config = d.policy.scaling.forecast
    if config is None:
        return
    acting = config.mode == "forecast_and_scale"
    forecast = d.forecast
    if forecast is None or not forecast.usable:
        why = forecast.problem if forecast is not None and forecast.problem else "no forecast yet"
        d.note("forecast", config.check, f"no forecast floor: {why}", mode=config.mode, floor=None)
        return
    lead = _lead(d.policy, config.lead)
    peak = forecast.peak(d.now, d.now + lead)
    if peak is None:
        d.note("forecast", config.check, "no forecast floor: no history for this time of day",
               mode=config.mode, floor=None)
        return
    check = _sizing_check(d.policy, config.check)
    floor = size_for_demand(d.policy, check, peak, d.serving + d.booting)
    before = d.combined
    if not acting:
        d.note("forecast", config.check,
               f"forecast: {peak:.1f} within {seconds(lead):g}s needs {floor} nodes "
               f"(forecast_only: not applied)", mode=config.mode, demand=peak, floor=floor,
               lead_s=seconds(lead), before=before, after=before)
        return
    d.combined = max(before, floor)
    d.note("forecast", config.check,
           (f"forecast: {peak:.1f} within {seconds(lead):g}s needs {floor} nodes; raises {before} to "
            f"{d.combined}") if d.combined > before else
           f"forecast: {peak:.1f} within {seconds(lead):g}s needs {floor} nodes ({before} already meets it)",
           mode=config.mode, demand=peak, floor=floor, lead_s=seconds(lead), before=before, after=d.combined)


# ------------------------------------------------------------------------------------------------ 6-9
def stabilize(d: Draft) -> None:
    """Kubernetes HPA's stabilization windows over the recommendation history."""
    behavior = d.policy.scaling.behavior
    out_window = behavior.scale_out.stabilization
    in_window = behavior.scale_in.stabilization
    keep_since = d.now - max(out_window, in_window)
    d.history = [(t, c) for t, c in d.memory.recommendations if t > keep_since]
    d.history.append((d.now, d.combined))
    # HPA seeds a new window with the current count: a controller that just started (or lost its
    # memory) has not seen the last window, so it must not scale in on what it saw in one tick.
    fresh = not d.memory.recommendations and d.memory.seed is None and d.memory.last_scale_in is None
    d.seed = (d.now, d.current) if fresh else d.memory.seed
    target = d.combined
    if target > d.current and out_window > ZERO:
        since = d.now - out_window
        lowest = min(c for t, c in d.history if t > since or t == d.now)
        if lowest < target:
            target = max(lowest, d.current)
            d.note("window", "scale-out-stabilization",
                   f"scale-out limited to {target}: the lowest recommendation of the last "
                   f"{seconds(out_window):g}s is {lowest}",
                   window_s=seconds(out_window), before=d.combined, after=target)
    elif target < d.current and in_window > ZERO:
        since = d.now - in_window
        window = [c for t, c in d.history if t > since or t == d.now]
        seeded = d.seed is not None and (d.seed[0] > since or d.seed[0] == d.now)
        if seeded:
            assert d.seed is not None
            window.append(d.seed[1])
        highest = max(window)
        if highest > target:
            target = min(highest, d.current)
            seeded_max = seeded and d.seed is not None and highest == d.seed[1]
            first = " (seeded with the count at start, as HPA does)" if seeded_max else ""
            d.note("window", "scale-in-stabilization",
                   f"scale-in limited to {target}: the highest recommendation of the last "
                   f"{seconds(in_window):g}s is {highest}{first}",
                   window_s=seconds(in_window), before=d.combined, after=target)
    d.target = target


def cooldown(d: Draft) -> None:
    """No move in a direction this soon after the last move in that direction."""
    behavior = d.policy.scaling.behavior
    if d.target > d.current and d.memory.last_scale_out is not None:
        wait = d.memory.last_scale_out + behavior.scale_out.cooldown - d.now
        direction, length = "scale-out", behavior.scale_out.cooldown
    elif d.target < d.current and d.memory.last_scale_in is not None:
        wait = d.memory.last_scale_in + behavior.scale_in.cooldown - d.now
        direction, length = "scale-in", behavior.scale_in.cooldown
    else:
        return
    if wait > ZERO:
        d.note("cooldown", direction,
               f"{direction} to {d.target} waits {seconds(wait):g}s more: cooldown of "
               f"{seconds(length):g}s after the last {direction}",
               before=d.target, after=d.current, remaining_s=seconds(wait))
        d.target = d.current


def rate_allowance(
    behavior: DirectionBehavior, events: Sequence[tuple[datetime, int]], *, current: int, outward: bool,
    now: datetime,
) -> tuple[int, str] | None:
    """Nodes still allowed to move in one direction under its rate policies, or None when unlimited.

    As Kubernetes HPA computes it: each policy's limit is taken from the count at the start of its
    period (the current count less what moved in that direction since); a percent scale-out may
    reach ``ceil(start × (1 + P/100))`` and a percent scale-in may go down to
    ``floor(start × (1 − P/100))``. Unlike HPA, a percent policy always allows at least one node,
    or a small pool under a percent-only policy could never move.
    """
    if not behavior.policies:
        return None
    allowances: list[tuple[int, str]] = []
    for policy in behavior.policies:
        since = now - policy.period
        moved = sum(abs(d) for t, d in events if t > since and (d > 0) == outward)
        period_start = current - moved if outward else current + moved
        if policy.nodes is not None:
            limit = policy.nodes
            text = f"{policy.nodes} nodes per {seconds(policy.period):g}s"
        else:
            assert policy.percent is not None
            if outward:
                limit = ceil_(period_start * (1 + policy.percent / 100)) - period_start
            else:
                limit = period_start - max(0, math.floor(period_start * (1 - policy.percent / 100) + EPSILON))
            limit = max(1, limit)
            text = f"{policy.percent:g}% per {seconds(policy.period):g}s ({limit} nodes from {period_start})"
        allowances.append((max(0, limit - moved), f"{text}, {moved} moved in the period"))
    return max(allowances) if behavior.select == "max" else min(allowances)


def rate_limit(d: Draft) -> None:
    """At most N nodes or P % per period in each direction."""
    behavior = d.policy.scaling.behavior
    longest = max((p.period for p in (*behavior.scale_out.policies, *behavior.scale_in.policies)),
                  default=ZERO)
    d.events = [(t, delta) for t, delta in d.memory.scale_events if t > d.now - longest]
    if d.target == d.current:
        return
    outward = d.target > d.current
    allowance = rate_allowance(behavior.scale_out if outward else behavior.scale_in, d.events,
                               current=d.current, outward=outward, now=d.now)
    if allowance is None or abs(d.target - d.current) <= allowance[0]:
        return
    allowed, text = allowance
    limited = d.current + allowed if outward else d.current - allowed
    direction = "scale-out" if outward else "scale-in"
    d.note("rate", direction, f"{direction} limited to {limited} (from {d.target}): rate limit {text}",
           before=d.target, after=limited, allowed=allowed)
    d.target = limited


def bound(d: Draft) -> None:
    """Scheduled floors and ceilings, then ``min_nodes``/``max_nodes``: absolute limits."""
    scaling = d.policy.scaling
    if scaling.schedules:
        lead = _lead(d.policy, None)
        floor: tuple[int, str] | None = None
        ceiling: tuple[int, str] | None = None
        for schedule in scaling.schedules:
            if schedule.min_nodes is not None and is_open(schedule, d.now, lead) and (
                floor is None or schedule.min_nodes > floor[0]
            ):
                floor = (schedule.min_nodes, schedule.name)
            if schedule.max_nodes is not None and is_open(schedule, d.now) and (
                ceiling is None or schedule.max_nodes < ceiling[0]
            ):
                ceiling = (schedule.max_nodes, schedule.name)
        if floor is not None:
            before = d.target
            d.target = max(d.target, floor[0])
            d.note("schedule", floor[1],
                   (f"scheduled floor {floor[0]} raises {before} to {d.target}" if d.target != before
                    else f"scheduled floor {floor[0]} is open ({before} already meets it)"),
                   floor=floor[0], lead_s=seconds(lead), before=before, after=d.target)
        if ceiling is not None:
            before = d.target
            d.target = min(d.target, ceiling[0])
            d.note("schedule", ceiling[1],
                   (f"scheduled ceiling {ceiling[0]} lowers {before} to {d.target}" if d.target != before
                    else f"scheduled ceiling {ceiling[0]} is open ({before} is within it)"),
                   ceiling=ceiling[0], before=before, after=d.target)
    if d.target < scaling.min_nodes:
        d.note("bound", "min_nodes", f"raised from {d.target} to the minimum of {scaling.min_nodes}",
               before=d.target, after=scaling.min_nodes)
        d.target = scaling.min_nodes
    elif d.target > scaling.max_nodes:
        d.note("bound", "max_nodes", f"lowered from {d.target} to the maximum of {scaling.max_nodes}",
               before=d.target, after=scaling.max_nodes)
        d.target = scaling.max_nodes


# ------------------------------------------------------------------------------------------------- 10
def _outdated(node: Node, policy: PoolPolicy, now: datetime) -> str | None:
    """Why ``node`` is to be replaced (outdated or past ``max_node_lifetime``), or None; never a
    protected node."""
    if node.protected:
        return None
    max_life = policy.scaling.behavior.max_node_lifetime
    if max_life is not None and now - node.launched_at >= max_life:
        return f"expired: up {seconds(now - node.launched_at):g}s, max_node_lifetime {seconds(max_life):g}s"
    if node.model_version != policy.launch.model_version:
        return f"outdated model version {node.model_version} (policy: {policy.launch.model_version})"
    image = policy.launch.image.id
    if image and node.image is not None and node.image != image:
        return f"outdated image {node.image} (policy: {image})"
    return None


def _outdated_each(nodes: Sequence[Node], policy: PoolPolicy, now: datetime) -> list[str | None]:
    """``_outdated`` of each node, the common case (no lifetime limit, the policy's model version and
    image) decided without the call: the engine asks for every node on every tick."""
    if policy.scaling.behavior.max_node_lifetime is not None:
        return [_outdated(n, policy, now) for n in nodes]
    version = policy.launch.model_version
    image = policy.launch.image.id
    return [
        None if n.model_version == version and (not image or n.image is None or n.image == image)
        else _outdated(n, policy, now)
        for n in nodes
    ]


def choose_victims(
    policy: PoolPolicy, serving: Sequence[Node], booting: Sequence[Node], *, need: int, now: datetime,
    reasons: list[Reason],
) -> tuple[str, ...]:
    """Pick up to ``need`` nodes to drain, in victim order, under min lifetime and last-node rules.

    Order: outdated model version or image (or expired) first, then fewest active streams (a booting
    node has none; an unknown count sorts last), then youngest; never the last serving node, never a
    node tagged ``autoscaler:do-not-disrupt``.
    """
    min_life = policy.scaling.behavior.min_node_lifetime
    candidates: list[tuple[tuple[int, float, float, str], Node, bool, str | None]] = []
    too_young = 0
    protected = 0
    for nodes, is_serving in ((serving, True), (booting, False)):
        for node in nodes:
            if node.protected:
                protected += 1
                continue
            if min_life > ZERO and now - node.launched_at < min_life:
                too_young += 1
                continue
            outdated = _outdated(node, policy, now)
            if not is_serving:
                streams = 0.0  # a booting node serves nobody yet
            elif node.active_streams is None:
                streams = math.inf  # unknown load: never assume a node is idle
            else:
                streams = node.active_streams
            key = (0 if outdated else 1, streams, -node.launched_at.timestamp(), node.id)
            candidates.append((key, node, is_serving, outdated))
    candidates.sort(key=lambda c: c[0])
    serving_left = len(serving)
    chosen: list[str] = []
    kept_last = False
    for _, node, is_serving, outdated in candidates:
        if len(chosen) >= need:
            break
        if is_serving:
            if serving_left <= 1:
                kept_last = True
                continue
            serving_left -= 1
        chosen.append(node.id)
        if outdated:
            why = outdated
        elif not is_serving:
            why = "still booting, serves nobody yet"
        elif node.active_streams is None:
            why = "active streams unknown, youngest of the rest"
        else:
            why = f"{node.active_streams:g} active streams"
        reasons.append(Reason("victim", node.id, f"drain {node.id}: {why}",
                              {"lifecycle": node.lifecycle.value, "active_streams": node.active_streams,
                               "model_version": node.model_version,
                               "launched_at": node.launched_at.isoformat()}))
    if len(chosen) < need:
        parts = []
        if too_young:
            parts.append(f"{too_young} younger than the minimum lifetime of {seconds(min_life):g}s")
        if kept_last:
            parts.append("the last serving node is never drained")
        if protected:
            parts.append(f"{protected} protected by {DO_NOT_DISRUPT_TAG}")
        reasons.append(Reason("victim", "shortfall",
                              f"only {len(chosen)} of {need} nodes can be drained now: " + "; ".join(parts),
                              {"needed": need, "chosen": len(chosen), "too_young": too_young,
                               "kept_last_serving": kept_last}
                              | ({"protected": protected} if protected else {})))
    return tuple(chosen)


def _rollout(d: Draft) -> None:
    """Replace outdated serving nodes under the disruption budget: launch first, drain once replaced."""
    policy = d.policy
    budget = policy.launch.rollout.budget(max(d.target, 1))
    extra = max(0, min(budget - d.replacing, len(d.outdated) - d.replacing))
    max_launching = policy.scaling.behavior.max_launching
    if max_launching is not None:
        extra = min(extra, max(0, max_launching - len(d.booting) - d.launch))
    # Drain an outdated node only when serving nodes exceed the target: its replacement serves.
    drainable = max(0, min(len(d.outdated), d.ready - d.target, budget - d.draining))
    # Outdated nodes sort first in victim order, and drainable never exceeds their number.
    victims = (choose_victims(policy, d.serving, (), need=drainable, now=d.now, reasons=d.reasons)
               if drainable else ())
    d.note("rollout", "replace-outdated",
           f"{len(d.outdated)} serving nodes run an outdated model version or image, or expired: "
           f"launch {extra} replacement(s), "
           f"drain {len(victims)} (at most {budget} draining at once, {d.draining} draining now, "
           f"{d.replacing} replacement(s) on the way)",
           outdated=len(d.outdated), budget=budget, launch=extra, drain=len(victims),
           draining=d.draining, replacing=d.replacing)
    d.launch += extra
    d.victims = victims
    d.next_replacing = max(0, d.replacing + extra - len(victims))


def plan_moves(d: Draft) -> None:
    """Turn the target into launches or victims, then replace outdated nodes under the budget."""
    max_launching = d.policy.scaling.behavior.max_launching
    if d.target > d.current:
        d.launch = d.target - d.current
        if max_launching is not None:
            room = max(0, max_launching - len(d.booting))
            if d.launch > room:
                d.note("capacity", "max_launching",
                       f"launching {room} of {d.launch} now: {len(d.booting)} already booting, "
                       f"at most {max_launching} boot at once",
                       wanted=d.launch, launch=room, booting=len(d.booting))
                d.launch = room
    elif d.target < d.current:
        d.victims = choose_victims(d.policy, d.serving, d.booting, need=d.current - d.target, now=d.now,
                                   reasons=d.reasons)
    d.scaling_launch, d.scaling_victims = d.launch, d.victims
    if d.outdated and not d.victims:
        _rollout(d)


def warm_pool(d: Draft) -> None:
    """Start warm instances before launching cold; keep the warm pool at its size, up to date."""
    config = d.policy.warm_pool
    if config is None:
        if d.warm or d.preparing:
            # A policy that dropped its warm pool: what is left of it is not capacity; let it go.
            d.discard = tuple(n.id for n in d.warm + d.preparing)
            d.note("warm", "no-warm-pool", f"no warm_pool in the policy: discard {len(d.discard)} warm "
                   "instance(s)", discard=list(d.discard))
        return
    # Oldest first: the instance that has waited longest is started (or kept) first.
    ordered = sorted(d.warm, key=lambda n: (n.launched_at, n.id))
    whys = list(zip(ordered, _outdated_each(ordered, d.policy, d.now), strict=True))
    outdated = [(n, why) for n, why in whys if why]
    usable = [n for n, why in whys if not why]
    discard = [n.id for n, _ in outdated]
    for node, why in outdated:
        d.note("warm", node.id, f"discard warm {node.id}: {why}; never started, replaced",
               model_version=node.model_version, image=node.image)
    starts = usable[:d.launch]
    if starts:
        d.note("warm", "start",
               f"start {len(starts)} warm instance(s) ({config.state}) before launching cold: "
               f"{', '.join(n.id for n in starts)}; {d.launch - len(starts)} cold launch(es) for the rest",
               start=[n.id for n in starts], cold=d.launch - len(starts), warm=len(usable))
    elif d.launch and config.state == "stopped":
        d.note("warm", "empty", f"no warm instance to start: launch {d.launch} cold", cold=d.launch)
    d.launch -= len(starts)
    d.starts = tuple(n.id for n in starts)
    left = usable[len(starts):]
    in_service = d.target
    target = config.target(in_service)
    # Nodes draining now, and this tick's victims, come back to the pool when reuse is on.
    victims = set(d.victims)
    leaving = d.draining_nodes + [n for n in d.serving + d.booting if n.id in victims
                                  and n.lifecycle in (Lifecycle.SERVING, Lifecycle.STARTING)]
    reusable = [n for n in leaving if not _outdated(n, d.policy, d.now)] if config.reuse_on_scale_in else []
    have = len(left) + len(d.preparing)
    if have > target:
        # Beyond the size (it shrank, or max_prepared squeezes it): the newest stopped ones go first.
        extra = [n.id for n in reversed(left)][: have - target]
        discard += extra
        if extra:
            d.note("warm", "shrink", f"warm pool holds {have}, size {target}: discard {len(extra)}",
                   have=have, target=target, discard=extra)
    need = max(0, target - have - len(reusable))
    max_launching = d.policy.scaling.behavior.max_launching
    if need and max_launching is not None:
        room = max(0, max_launching - len(d.booting) - d.launch - len(d.preparing))
        if room < need:
            d.note("capacity", "max_launching-warm",
                   f"preparing {room} of {need} warm instance(s): at most {max_launching} boot at once",
                   wanted=need, prepare=room)
            need = room
    if need:
        d.note("warm", "prepare",
               f"warm pool holds {have} (+{len(reusable)} draining to reuse), size {target}: prepare {need} "
               f"(launch cold, stop once healthy)",
               have=have, reusable=len(reusable), target=target, prepare=need)
    d.prepare = need
    d.discard = tuple(discard)
    d.warm_target = target


def protect(d: Draft) -> None:
    """Name the nodes that voluntary disruption leaves alone, and those past ``max_node_lifetime``.

    The rules themselves are in ``_outdated`` and ``choose_victims`` (both skip protected nodes, and
    expired nodes are replaced like outdated ones, under the rollout's disruption budget); this step
    puts them in the reason trail.
    """
    protected = [n.id for n in (*d.serving, *d.booting) if n.protected]
    if protected:
        d.note("protection", DO_NOT_DISRUPT_TAG,
               f"{len(protected)} node(s) tagged {DO_NOT_DISRUPT_TAG}: never drained, replaced or expired",
               nodes=protected)
    max_life = d.policy.scaling.behavior.max_node_lifetime
    if max_life is not None:
        expired = [n.id for n in d.outdated if (_outdated(n, d.policy, d.now) or "").startswith("expired")]
        if expired:
            d.note("expiry", "max_node_lifetime",
                   f"{len(expired)} node(s) up longer than {seconds(max_life):g}s: replaced under the "
                   "disruption budget", nodes=expired)


def pause(d: Draft) -> None:
    """A paused pool (``paused: true``, or ``autoscaler pause``) acts on nothing: the moves the steps
    above planned are recorded in the trail, then dropped."""
    if not d.policy.paused:
        return
    d.note("pause", d.policy.pool,
           f"paused: would launch {d.launch} and drain {len(d.victims)} (target {d.target}); "
           "acting on nothing",
           would_launch=d.launch, would_drain=list(d.victims), would_target=d.target,
           would_start=list(d.starts), would_prepare=d.prepare, would_discard=list(d.discard))
    d.launch, d.victims = 0, ()
    d.starts, d.prepare, d.discard = (), 0, ()
    d.scaling_launch, d.scaling_victims = 0, ()
    d.next_replacing = d.replacing


#: The pipeline, in order. A new mechanism is one new step here.
STEPS: tuple[Step, ...] = (
    vote, combine, missing_data_fallback, look_ahead, forecast_floor,
    stabilize, cooldown, rate_limit, bound, protect, plan_moves, warm_pool, pause,
)


def _finish(d: Draft) -> Evaluation:
    """The final reason, the decision and the memory for the next tick."""
    if d.policy.paused:
        final = f"paused at {d.current}" + (f" (would want {d.target})" if d.target != d.current else "")
    elif d.scaling_launch == 0 and not d.scaling_victims and (d.launch or d.starts or d.victims):
        final = (f"hold at {d.current}, replacing outdated nodes: launch {d.launch}, "
                 + (f"start {len(d.starts)} warm, " if d.starts else "") + f"drain {len(d.victims)}")
    elif d.launch or d.starts:
        final = f"scale out {d.current}→{d.target}: " + (
            f"start {len(d.starts)} warm, launch {d.launch}" if d.starts else f"launch {d.launch}")
    elif d.victims:
        final = f"scale in {d.current}→{d.target}: drain {len(d.victims)}"
    elif d.target != d.current:
        final = f"want {d.target}, at {d.current}: no move possible this tick"
    else:
        final = f"hold at {d.current}"
    if d.winner and d.combined != d.current:
        final += f" (largest recommendation {d.combined} from {d.winner})"
    d.note("final", d.policy.pool, final, current=d.current, ready=d.ready, booting=len(d.booting),
           draining=d.draining, recommendation=d.combined, desired=d.target, launch=d.launch,
           victims=list(d.victims), start=list(d.starts), prepare=d.prepare, discard=list(d.discard),
           warm=len(d.warm), warm_target=d.warm_target)

    # Rollout replacements keep the pool's size: only scaling moves count toward rate limits/cooldowns.
    last_out, last_in = d.memory.last_scale_out, d.memory.last_scale_in
    if d.scaling_launch:
        d.events.append((d.now, d.scaling_launch))  # warm starts included: they add capacity too
        last_out = d.now
    elif d.scaling_victims:
        d.events.append((d.now, -len(d.scaling_victims)))
        last_in = d.now
    # The seed matters only while it is inside the scale-in window.
    in_window = d.policy.scaling.behavior.scale_in.stabilization
    seed = d.seed if d.seed is not None and d.seed[0] > d.now - in_window else None
    memory = trusted_memory({
        "recommendations": d.history, "scale_events": d.events, "last_scale_out": last_out,
        "last_scale_in": last_in, "streaks": d.streaks, "replacing": d.next_replacing,
        "missing_ticks": d.missing_ticks, "seed": seed, "trend": d.trend,
    })
    decision = Decision(pool=d.policy.pool, at=d.now, ready=d.ready, booting=len(d.booting),
                        draining=d.draining, desired=d.target, launch=d.launch, victims=d.victims,
                        reasons=tuple(d.reasons), start=d.starts, prepare=d.prepare, discard=d.discard,
                        warm=len(d.warm), warm_target=d.warm_target)
    return Evaluation(decision=decision, memory=memory)


def decide(
    policy: PoolPolicy,
    samples: Mapping[str, Sample],
    nodes: Sequence[Node],
    memory: EngineMemory,
    now: datetime,
    forecast: Forecast | None = None,
) -> Evaluation:
    """Decide the pool's node count at ``now`` by running ``STEPS`` in order.

    ``samples`` maps each check name to its reading (a missing key is no data). ``nodes`` are the
    pool's booting, starting, serving and draining nodes, and its warm pool (preparing, stopped).
    ``forecast`` is the pool's seasonal forecast, made
    outside the engine from history (``policy.forecast``), or None. Returns a ``Decision`` whose
    ``launch`` and ``victims`` say what to do, with the full reason trail, and the next memory.
    """
    draft = Draft.start(policy, samples, nodes, memory, now, forecast)
    for step in STEPS:
        step(draft)
    return _finish(draft)
