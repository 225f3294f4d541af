"""The decision engine: a pure function of (policy, samples, nodes, memory, now).

It does no I/O and reads no clock. The live controller and the dry-run simulator both call
``decide``; the only state it keeps between ticks is the ``EngineMemory`` it returns, which the
caller stores and hands back next tick.

The steps, in the order they apply (each one that changes the number leaves a ``Reason``):

1. **Checks vote.** Each check turns its sample into a recommended node count. A check with no data
   (missing, ``None``, NaN, infinite, an error) votes *hold*. Target tracking recommends
   ``ceil(ready × value / target)`` outside its tolerance band; a step rule recommends ``ready + N``
   (scale-out: booting nodes are on the way and count toward N) or ``current − N`` (scale-in) once its
   band has held for ``for_ticks`` ticks.
2. **Combine.** The largest recommendation wins, and *hold* is the current count: so scale-out beats
   hold beats scale-in, and among one direction the larger count wins. If any check had no data the
   result is never below the current count: missing data never removes a node.
3. **Missing-data fallback** after ``on_missing_data.after_ticks`` consecutive blind ticks:
   ``hold`` keeps step 2's result; ``keep_at_least`` raises it to at least N; ``fixed`` pins it to N
   but, as data is missing, never below the current count.
4. **Stabilization** (Kubernetes HPA's meaning): scale-out goes no higher than the lowest
   recommendation of its window; scale-in goes no lower than the highest recommendation of its window.
5. **Cooldown** per direction: no move in a direction this soon after the last one.
6. **Rate limits** per direction: at most N nodes or P % of the current count per period (``select``
   max = the most permissive policy, min = the strictest); P % is always at least one node.
7. **Bounds**: open scheduled floors (applied ``boot_lead`` ahead of their window) raise the count,
   open scheduled ceilings lower it (a ceiling wins over a floor), then ``min_nodes``/``max_nodes``
   clamp it. Bounds are absolute: they override cooldowns and rate limits.
8. **Moves.** Scale-out launches ``desired − current`` nodes, fewer when ``max_launching`` nodes are
   already booting. Scale-in picks victims among serving and booting nodes old enough to have served
   ``min_node_lifetime``: outdated model version or image first, then fewest active streams (a booting
   node has none; an unknown count sorts last), then youngest; never the last serving node.

``Decision.desired`` is the target after step 7 (always within ``[min_nodes, max_nodes]``);
``launch`` and ``victims`` are the moves taken now toward it and can fall short of it (step 8).
Booting (and launching) nodes count toward the current count; draining nodes do not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from autoscaler.domain import Decision, Lifecycle, Node, Reason, Sample
from autoscaler.policy.model import (
    DirectionBehavior,
    PoolPolicy,
    StepCheck,
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


@dataclass(frozen=True)
class Evaluation:
    """The engine's answer: the decision, and the memory to pass to the next tick."""

    decision: Decision
    memory: EngineMemory


# Float noise must not turn ceil(5 × 7 / 7) into 6.
_EPSILON = 1e-9
_ZERO = timedelta(0)


def _ceil(x: float) -> int:
    return math.ceil(x - _EPSILON)


def _vote(recommendation: int, current: int) -> str:
    if recommendation > current:
        return "out"
    if recommendation < current:
        return "in"
    return "hold"


def _seconds(value: timedelta) -> float:
    return value.total_seconds()


def _target_tracking(
    check: TargetTrackingCheck, value: float, ready: int, current: int
) -> tuple[int, Reason]:
    """Recommend ``ceil(ready × value / target)`` (per node) or ``ceil(value / target)`` (per pool).

    Above the band the vote is never below ``current`` and below it never above ``current``, so the
    vote is monotonic in the value even while booting nodes make ``current`` exceed ``ready``.
    """
    detail: dict[str, Any] = {"query": check.query, "value": value, "target": check.target,
                              "tolerance": check.tolerance, "per": check.per}
    if check.per == "node":
        if ready == 0:
            detail.update(vote="hold", recommendation=current)
            return current, Reason("check", check.name, "no serving node to measure per-node load; holds",
                                   detail)
        ratio = value / check.target
        raw = _ceil(ready * ratio)
    else:
        raw = _ceil(value / check.target)
        # With nobody serving, any pool load is infinitely above target and none is below it.
        ratio = value / (check.target * ready) if ready > 0 else (math.inf if value > 0 else 0.0)
    if abs(ratio - 1.0) <= check.tolerance + _EPSILON:
        recommendation = current
        message = (f"{value:g} is within {check.tolerance:.0%} of target {check.target:g} "
                   f"(factor {ratio:.2f}); holds at {current}")
    elif ratio > 1.0:
        recommendation = max(raw, current)
        if recommendation > current:
            message = (f"{value:g} is above target {check.target:g} (factor {ratio:.2f}): "
                       f"{ready} serving nodes need {raw}; votes out to {recommendation}")
        else:
            message = (f"{value:g} is above target {check.target:g} (factor {ratio:.2f}): {raw} nodes "
                       f"suffice and {current} are serving or booting; holds")
    else:
        recommendation = min(raw, current)
        if recommendation < current:
            message = (f"{value:g} is below target {check.target:g} (factor {ratio:.2f}): "
                       f"{raw} nodes suffice; votes in to {recommendation}")
        else:
            message = f"{value:g} is below target {check.target:g} (factor {ratio:.2f}); holds at {current}"
    detail.update(factor=ratio if math.isfinite(ratio) else None, raw=raw,
                  vote=_vote(recommendation, current), recommendation=recommendation)
    return recommendation, Reason("check", check.name, message, detail)


def _step(
    check: StepCheck,
    value: float,
    *,
    ready: int,
    current: int,
    old_streaks: Mapping[str, int],
    new_streaks: dict[str, int],
) -> tuple[int | None, Reason]:
    """Recommend from the step bands the value is in and has been in for ``for_ticks`` ticks.

    A scale-out band adds to the *serving* count (booting nodes are on the way, so they count toward
    the band's N); a scale-in band removes from the current count. Several bands: scale-out beats
    scale-in; the largest scale-out or the deepest scale-in wins.

    In no active band the check votes *hold* when it has a scale-in band (the metric sits in its
    comfortable range) or a scale-out band is still waiting for its ticks (pressure is building);
    otherwise it has no opinion and abstains (``None``): a rule that only ever adds nodes, like "GPU
    memory above 90 % → +2", must not stop target tracking from scaling in. Both choices keep the
    vote monotonic in the value.
    """
    outs: list[tuple[int, str]] = []
    ins: list[tuple[int, str]] = []
    pending: list[str] = []
    pending_out = False
    has_in_band = False
    for index, step in enumerate(check.steps):
        outward = (step.change or 0) > 0 or (step.change_percent or 0) > 0
        has_in_band = has_in_band or not outward
        if step.above is not None:
            inside = value > step.above
            band = f"above {step.above:g}"
        else:
            assert step.below is not None  # the model requires exactly one bound
            inside = value < step.below
            band = f"below {step.below:g}"
        if not inside:
            continue
        key = f"{check.name}#{index}"
        streak = old_streaks.get(key, 0) + 1
        new_streaks[key] = streak
        if streak < check.for_ticks:
            pending.append(f"{band} for {streak} of {check.for_ticks} ticks")
            pending_out = pending_out or outward
            continue
        if step.change is not None:
            delta = step.change
            change = f"{delta:+d}"
        else:
            assert step.change_percent is not None
            base = ready if step.change_percent > 0 else current
            delta = int(math.copysign(max(1, _ceil(base * abs(step.change_percent) / 100)),
                                      step.change_percent))
            change = f"{step.change_percent:+g}% ({delta:+d})"
        if delta > 0:
            outs.append((max(ready + delta, current), f"{band}: {change}"))
        else:
            ins.append((max(current + delta, 0), f"{band}: {change}"))
    recommendation: int | None
    if outs or ins:
        recommendation, band_text = max(outs) if outs else min(ins)
        if recommendation == current:
            message = f"{value:g} is {band_text}, but {current} nodes are serving or booting already; holds"
        else:
            message = f"{value:g} is {band_text}; votes {_vote(recommendation, current)} to {recommendation}"
    else:
        band_text = ""
        recommendation = current if has_in_band or pending_out else None
        if pending:
            then = "holds" if recommendation is not None else "no vote"
            message = f"{value:g} is {', '.join(pending)}; {then} until the band persists"
        elif recommendation is not None:
            message = f"{value:g} is in no band; holds at {current}"
        else:
            message = f"{value:g} is in no band; no vote (this rule only adds nodes)"
    vote = "abstain" if recommendation is None else _vote(recommendation, current)
    detail = {"query": check.query, "value": value, "vote": vote,
              "recommendation": recommendation, "band": band_text or None, "pending": pending}
    return recommendation, Reason("check", check.name, message, detail)


def _rate_allowance(
    behavior: DirectionBehavior, events: Sequence[tuple[datetime, int]], *, current: int, outward: bool,
    now: datetime,
) -> tuple[int, str] | None:
    """Nodes still allowed to move in one direction under its rate policies, or None when unlimited."""
    if not behavior.policies:
        return None
    allowances: list[tuple[int, str]] = []
    for policy in behavior.policies:
        if policy.nodes is not None:
            limit = policy.nodes
            text = f"{policy.nodes} nodes per {_seconds(policy.period):g}s"
        else:
            assert policy.percent is not None
            # At least one node, or a small pool under a percent-only policy could never move.
            limit = max(1, math.floor(current * policy.percent / 100 + _EPSILON))
            if outward:
                limit = max(1, _ceil(current * policy.percent / 100))
            text = f"{policy.percent:g}% per {_seconds(policy.period):g}s ({limit} nodes)"
        since = now - policy.period
        moved = sum(abs(d) for t, d in events if t > since and (d > 0) == outward)
        allowances.append((max(0, limit - moved), f"{text}, {moved} moved in the period"))
    return max(allowances) if behavior.select == "max" else min(allowances)


def _outdated(node: Node, policy: PoolPolicy) -> str | None:
    if node.model_version != policy.launch.model_version:
        return f"outdated model version {node.model_version} (policy: {policy.launch.model_version})"
    image = policy.launch.image.id
    if image and node.image is not None and node.image != image:
        return f"outdated image {node.image} (policy: {image})"
    return None


def _choose_victims(
    policy: PoolPolicy, serving: Sequence[Node], booting: Sequence[Node], *, need: int, now: datetime,
    reasons: list[Reason],
) -> tuple[str, ...]:
    """Pick up to ``need`` nodes to drain, in victim order, under min lifetime and last-node rules."""
    min_life = policy.scaling.behavior.min_node_lifetime
    candidates: list[tuple[tuple[int, float, float, str], Node, bool, str | None]] = []
    too_young = 0
    for nodes, is_serving in ((serving, True), (booting, False)):
        for node in nodes:
            if min_life > _ZERO and now - node.launched_at < min_life:
                too_young += 1
                continue
            outdated = _outdated(node, policy)
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
            parts.append(f"{too_young} younger than the minimum lifetime of {_seconds(min_life):g}s")
        if kept_last:
            parts.append("the last serving node is never drained")
        reasons.append(Reason("victim", "shortfall",
                              f"only {len(chosen)} of {need} nodes can be drained now: " + "; ".join(parts),
                              {"needed": need, "chosen": len(chosen), "too_young": too_young,
                               "kept_last_serving": kept_last}))
    return tuple(chosen)


def _rollout(
    policy: PoolPolicy, serving: Sequence[Node], outdated: Sequence[Node], booting: Sequence[Node],
    draining: int, *, target: int, replacing: int, launch: int, now: datetime, reasons: list[Reason],
) -> tuple[int, tuple[str, ...], int]:
    """Replace outdated serving nodes under the disruption budget: launch first, drain once replaced.

    Returns the launch count, the victims and the replacements still in flight after this tick.
    """
    budget = policy.launch.rollout.budget(max(target, 1))
    extra = max(0, min(budget - replacing, len(outdated) - replacing))
    max_launching = policy.scaling.behavior.max_launching
    if max_launching is not None:
        extra = min(extra, max(0, max_launching - len(booting) - launch))
    # Drain an outdated node only when serving nodes exceed the target: its replacement serves.
    drainable = max(0, min(len(outdated), len(serving) - target, budget - draining))
    # Outdated nodes sort first in victim order, and drainable never exceeds their number.
    victims = (_choose_victims(policy, serving, (), need=drainable, now=now, reasons=reasons)
               if drainable else ())
    reasons.append(Reason(
        "rollout", "replace-outdated",
        f"{len(outdated)} serving nodes run an outdated model version or image: "
        f"launch {extra} replacement(s), "
        f"drain {len(victims)} (at most {budget} draining at once, {draining} draining now, "
        f"{replacing} replacement(s) on the way)",
        {"outdated": len(outdated), "budget": budget, "launch": extra, "drain": len(victims),
         "draining": draining, "replacing": replacing},
    ))
    return launch + extra, victims, max(0, replacing + extra - len(victims))


def decide(
    policy: PoolPolicy,
    samples: Mapping[str, Sample],
    nodes: Sequence[Node],
    memory: EngineMemory,
    now: datetime,
) -> Evaluation:
    """Decide the pool's node count at ``now``.

    ``samples`` maps each check name to its reading (a missing key is no data). ``nodes`` are the
    pool's booting, serving and draining nodes. Returns a ``Decision`` whose ``launch`` and
    ``victims`` say what to do, with the full reason trail, and the next memory.
    """
    scaling = policy.scaling
    behavior = scaling.behavior
    reasons: list[Reason] = []

    serving: list[Node] = []
    booting: list[Node] = []
    draining = 0
    for node in nodes:
        state = node.lifecycle
        if state is Lifecycle.SERVING:
            serving.append(node)
        elif state is Lifecycle.BOOTING or state is Lifecycle.LAUNCHING:
            # Launched but not yet serving: capacity on the way, so it is not launched twice.
            booting.append(node)
        elif state is Lifecycle.DRAINING:
            draining += 1
    ready = len(serving)
    # Replacements of outdated nodes (a rollout) run on top of the pool's size: they do not count
    # toward it, or the surge would become permanent capacity through the "hold" vote.
    outdated_serving = [n for n in serving if _outdated(n, policy)]
    replacing = min(memory.replacing, len(outdated_serving), ready + len(booting) - len(outdated_serving))
    current = ready + len(booting) - replacing

    # 1-2. Checks vote; the largest recommendation wins (hold = current).
    new_streaks: dict[str, int] = {}
    votes: list[tuple[int, str]] = []
    missing: list[str] = []
    for check in scaling.checks:
        sample = samples.get(check.name)
        if sample is None or sample.value is None or not math.isfinite(sample.value):
            why = "no sample" if sample is None else (sample.error or f"value {sample.value}")
            missing.append(check.name)
            reasons.append(Reason("check", check.name, f"no data ({why}); votes hold",
                                  {"query": check.query, "value": None, "error": why, "vote": "hold",
                                   "recommendation": current}))
            continue
        recommendation: int | None
        if isinstance(check, TargetTrackingCheck):
            recommendation, reason = _target_tracking(check, sample.value, ready, current)
        else:
            recommendation, reason = _step(check, sample.value, ready=ready, current=current,
                                          old_streaks=memory.streaks, new_streaks=new_streaks)
        reasons.append(reason)
        if recommendation is not None:
            votes.append((recommendation, check.name))
    # max() of the votes: a hold vote equals ``current``, so out > hold > in falls out of it. No
    # vote at all (every check abstained) is a hold.
    combined, winner = max(votes) if votes else (current, "")
    if missing:
        if combined < current:
            reasons.append(Reason("fallback", "missing-data",
                                  f"no data from {', '.join(missing)}: scale-in to {combined} blocked; "
                                  "missing data never removes a node",
                                  {"missing": missing, "before": combined, "after": current}))
        combined = max(combined, current)

    # 3. Missing-data fallback after K consecutive blind ticks.
    missing_ticks = memory.missing_ticks + 1 if missing else 0
    fallback = scaling.on_missing_data
    if missing and missing_ticks >= fallback.after_ticks:
        before = combined
        if fallback.action == "keep_at_least":
            assert fallback.nodes is not None
            combined = max(combined, fallback.nodes)
            message = f"no data for {missing_ticks} ticks: keep at least {fallback.nodes} nodes"
        elif fallback.action == "fixed":
            assert fallback.nodes is not None
            combined = max(fallback.nodes, current)
            message = f"no data for {missing_ticks} ticks: fixed at {fallback.nodes} nodes"
            if fallback.nodes < current:
                message += f", but missing data never removes a node: holds at {current}"
        else:
            message = f"no data for {missing_ticks} ticks: hold (checks with data may still scale out)"
        reasons.append(Reason("fallback", fallback.action, message,
                              {"missing_ticks": missing_ticks, "after_ticks": fallback.after_ticks,
                               "before": before, "after": combined}))

    # 4. Stabilization windows over the recommendation history.
    out_window = behavior.scale_out.stabilization
    in_window = behavior.scale_in.stabilization
    keep_since = now - max(out_window, in_window)
    history = [(t, c) for t, c in memory.recommendations if t > keep_since]
    history.append((now, combined))
    target = combined
    if target > current and out_window > _ZERO:
        since = now - out_window
        lowest = min(c for t, c in history if t > since or t == now)
        if lowest < target:
            target = max(lowest, current)
            reasons.append(Reason("window", "scale-out-stabilization",
                                  f"scale-out limited to {target}: the lowest recommendation of the last "
                                  f"{_seconds(out_window):g}s is {lowest}",
                                  {"window_s": _seconds(out_window), "before": combined, "after": target}))
    elif target < current and in_window > _ZERO:
        since = now - in_window
        highest = max(c for t, c in history if t > since or t == now)
        if highest > target:
            target = min(highest, current)
            reasons.append(Reason("window", "scale-in-stabilization",
                                  f"scale-in limited to {target}: the highest recommendation of the last "
                                  f"{_seconds(in_window):g}s is {highest}",
                                  {"window_s": _seconds(in_window), "before": combined, "after": target}))

    # 5. Cooldowns.
    if target > current and memory.last_scale_out is not None:
        wait = memory.last_scale_out + behavior.scale_out.cooldown - now
        if wait > _ZERO:
            reasons.append(Reason("cooldown", "scale-out",
                                  f"scale-out to {target} waits {_seconds(wait):g}s more: cooldown of "
                                  f"{_seconds(behavior.scale_out.cooldown):g}s after the last scale-out",
                                  {"before": target, "after": current, "remaining_s": _seconds(wait)}))
            target = current
    elif target < current and memory.last_scale_in is not None:
        wait = memory.last_scale_in + behavior.scale_in.cooldown - now
        if wait > _ZERO:
            reasons.append(Reason("cooldown", "scale-in",
                                  f"scale-in to {target} waits {_seconds(wait):g}s more: cooldown of "
                                  f"{_seconds(behavior.scale_in.cooldown):g}s after the last scale-in",
                                  {"before": target, "after": current, "remaining_s": _seconds(wait)}))
            target = current

    # 6. Rate limits.
    longest_period = max((p.period for p in (*behavior.scale_out.policies, *behavior.scale_in.policies)),
                         default=_ZERO)
    events = [(t, d) for t, d in memory.scale_events if t > now - longest_period]
    if target != current:
        outward = target > current
        allowance = _rate_allowance(behavior.scale_out if outward else behavior.scale_in, events,
                                    current=current, outward=outward, now=now)
        if allowance is not None and abs(target - current) > allowance[0]:
            allowed, text = allowance
            limited = current + allowed if outward else current - allowed
            reasons.append(Reason("rate", "scale-out" if outward else "scale-in",
                                  f"{'scale-out' if outward else 'scale-in'} limited to {limited} "
                                  f"(from {target}): rate limit {text}",
                                  {"before": target, "after": limited, "allowed": allowed}))
            target = limited

    # 7. Bounds: scheduled floors and ceilings, then min/max.
    if scaling.schedules:
        lead = scaling.boot_lead if scaling.boot_lead is not None else policy.health.boot_timeout
        floor: tuple[int, str] | None = None
        ceiling: tuple[int, str] | None = None
        for schedule in scaling.schedules:
            if schedule.min_nodes is not None and is_open(schedule, now, lead) and (
                floor is None or schedule.min_nodes > floor[0]
            ):
                floor = (schedule.min_nodes, schedule.name)
            if schedule.max_nodes is not None and is_open(schedule, now) and (
                ceiling is None or schedule.max_nodes < ceiling[0]
            ):
                ceiling = (schedule.max_nodes, schedule.name)
        if floor is not None:
            before = target
            target = max(target, floor[0])
            reasons.append(Reason("schedule", floor[1],
                                  (f"scheduled floor {floor[0]} raises {before} to {target}"
                                   if target != before
                                   else f"scheduled floor {floor[0]} is open ({before} already meets it)"),
                                  {"floor": floor[0], "lead_s": _seconds(lead), "before": before,
                                   "after": target}))
        if ceiling is not None:
            before = target
            target = min(target, ceiling[0])
            reasons.append(Reason("schedule", ceiling[1],
                                  (f"scheduled ceiling {ceiling[0]} lowers {before} to {target}"
                                   if target != before
                                   else f"scheduled ceiling {ceiling[0]} is open ({before} is within it)"),
                                  {"ceiling": ceiling[0], "before": before, "after": target}))
    if target < scaling.min_nodes:
        reasons.append(Reason("bound", "min_nodes",
                              f"raised from {target} to the minimum of {scaling.min_nodes}",
                              {"before": target, "after": scaling.min_nodes}))
        target = scaling.min_nodes
    elif target > scaling.max_nodes:
        reasons.append(Reason("bound", "max_nodes",
                              f"lowered from {target} to the maximum of {scaling.max_nodes}",
                              {"before": target, "after": scaling.max_nodes}))
        target = scaling.max_nodes

    # 8. Moves.
    launch = 0
    victims: tuple[str, ...] = ()
    if target > current:
        launch = target - current
        if behavior.max_launching is not None:
            room = max(0, behavior.max_launching - len(booting))
            if launch > room:
                reasons.append(Reason("capacity", "max_launching",
                                      f"launching {room} of {launch} now: {len(booting)} already booting, "
                                      f"at most {behavior.max_launching} boot at once",
                                      {"wanted": launch, "launch": room, "booting": len(booting)}))
                launch = room
    elif target < current:
        victims = _choose_victims(policy, serving, booting, need=current - target, now=now, reasons=reasons)
    scaling_launch, scaling_victims = launch, victims
    next_replacing = 0
    if outdated_serving and not victims:
        launch, victims, next_replacing = _rollout(
            policy, serving, outdated_serving, booting, draining, target=target, replacing=replacing,
            launch=launch, now=now, reasons=reasons)

    if scaling_launch == 0 and not scaling_victims and (launch or victims):
        final = f"hold at {current}, replacing outdated nodes: launch {launch}, drain {len(victims)}"
    elif launch:
        final = f"scale out {current}→{target}: launch {launch}"
    elif victims:
        final = f"scale in {current}→{target}: drain {len(victims)}"
    elif target != current:
        final = f"want {target}, at {current}: no move possible this tick"
    else:
        final = f"hold at {current}"
    if winner and combined != current:
        final += f" (largest recommendation {combined} from {winner})"
    reasons.append(Reason("final", policy.pool, final,
                          {"current": current, "ready": ready, "booting": len(booting), "draining": draining,
                           "recommendation": combined, "desired": target, "launch": launch,
                           "victims": list(victims)}))

    # Memory for the next tick, pruned to the longest window so it stays small.
    last_out, last_in = memory.last_scale_out, memory.last_scale_in
    # Rollout replacements keep the pool's size: only scaling moves count toward rate limits/cooldowns.
    if scaling_launch:
        events.append((now, scaling_launch))
        last_out = now
    elif scaling_victims:
        events.append((now, -len(scaling_victims)))
        last_in = now
    next_memory = EngineMemory.model_construct(
        recommendations=history, scale_events=events, last_scale_out=last_out, last_scale_in=last_in,
        streaks=new_streaks, missing_ticks=missing_ticks, replacing=next_replacing,
    )
    decision = Decision(pool=policy.pool, at=now, ready=ready, booting=len(booting), draining=draining,
                        desired=target, launch=launch, victims=victims, reasons=tuple(reasons))
    return Evaluation(decision=decision, memory=next_memory)
