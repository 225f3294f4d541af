"""How each check type turns one reading into a recommended node count (the engine's *vote* step).

One function per check type, each pure: target tracking (Kubernetes HPA's rule), step bands, and
stream-aware queueing. ``size_for_demand`` answers "how many nodes for this much demand" for the
checks that can say it, which the look-ahead and the forecast floor reuse.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from autoscaler.domain import Node, Reason
from autoscaler.policy.model import (
    Behavior,
    PoolPolicy,
    QueueingCheck,
    StepCheck,
    TargetTrackingCheck,
)
from autoscaler.policy.queueing import servers_for_wait_probability, servers_for_wait_quantile

# Float noise must not turn ceil(5 × 7 / 7) into 6.
EPSILON = 1e-9
ZERO = timedelta(0)


def ceil_(x: float) -> int:
    """``ceil`` that ignores float noise: ``ceil(5 × 7 / 7)`` is 5, not 6."""
    return math.ceil(x - EPSILON)


def vote_of(recommendation: int, current: int) -> str:
    """``out``, ``in`` or ``hold``: which way ``recommendation`` moves from ``current``."""
    if recommendation > current:
        return "out"
    if recommendation < current:
        return "in"
    return "hold"


def seconds(value: timedelta) -> float:
    """A duration as float seconds."""
    return value.total_seconds()


def target_tracking(
    check: TargetTrackingCheck, value: float, ready: int, current: int, behavior: Behavior | None = None
) -> tuple[int, Reason]:
    """Recommend ``ceil(ready × value / target)`` (per node) or ``ceil(value / target)`` (per pool).

    Above the band the vote is never below ``current`` and below it never above ``current``, so the
    vote is monotonic in the value even while booting nodes make ``current`` exceed ``ready``.
    The tolerance is the check's, or the direction's own when ``behavior`` sets one (Kubernetes 1.33).
    """
    detail: dict[str, Any] = {"query": check.query, "value": value, "target": check.target,
                              "tolerance": check.tolerance, "per": check.per}
    if check.per == "node":
        if ready == 0:
            detail.update(vote="hold", recommendation=current)
            return current, Reason("check", check.name, "no serving node to measure per-node load; holds",
                                   detail)
        ratio = value / check.target
        raw = ceil_(ready * ratio)
    else:
        raw = ceil_(value / check.target)
        # With nobody serving, any pool load is infinitely above target and none is below it.
        ratio = value / (check.target * ready) if ready > 0 else (math.inf if value > 0 else 0.0)
    tolerance = check.tolerance
    if behavior is not None:
        direction = behavior.scale_out if ratio > 1.0 else behavior.scale_in
        if direction.tolerance is not None:
            tolerance = direction.tolerance
    detail["tolerance"] = tolerance
    if abs(ratio - 1.0) <= tolerance + EPSILON:
        recommendation = current
        message = (f"{value:g} is within {tolerance:.0%} of target {check.target:g} "
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
                  vote=vote_of(recommendation, current), recommendation=recommendation)
    return recommendation, Reason("check", check.name, message, detail)


def step_bands(
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
            delta = int(math.copysign(max(1, ceil_(base * abs(step.change_percent) / 100)),
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
            direction = vote_of(recommendation, current)
            message = f"{value:g} is {band_text}; votes {direction} to {recommendation}"
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
    vote = "abstain" if recommendation is None else vote_of(recommendation, current)
    detail = {"query": check.query, "value": value, "vote": vote,
              "recommendation": recommendation, "band": band_text or None, "pending": pending}
    return recommendation, Reason("check", check.name, message, detail)


def servers_needed(check: QueueingCheck, load: float) -> int:
    """Stream slots that meet ``check``'s service level at ``load`` Erlangs (see ``policy.queueing``)."""
    level = check.service_level
    if level.wait_probability is not None:
        return servers_for_wait_probability(load, level.wait_probability)
    assert level.wait is not None  # the model requires one of the two forms
    return servers_for_wait_quantile(load, level.quantile, seconds(level.wait), seconds(check.stream_seconds))


def nodes_for_slots(slots: int, capacities: Sequence[int], launch_streams: int) -> int:
    """The fewest nodes, keeping the largest of ``capacities`` and adding new ones of ``launch_streams``.

    Scale-out adds nodes of the first instance type (what a launch makes); scale-in removes the
    smallest nodes first, so the count never leaves fewer slots than ``slots``.
    """
    have = 0
    for count, capacity in enumerate(sorted(capacities, reverse=True)):
        if have >= slots:
            return count
        have += capacity
    if have >= slots:
        return len(capacities)
    return len(capacities) + ceil_((slots - have) / launch_streams)


def size_for_demand(
    policy: PoolPolicy, check: QueueingCheck | TargetTrackingCheck, demand: float, nodes: Sequence[Node]
) -> int:
    """Nodes ``check`` would want for ``demand`` (its signal's value), given the pool's current nodes."""
    if isinstance(check, TargetTrackingCheck):
        return ceil_(demand / check.target)
    capacities = [n.capacity_streams for n in nodes]
    return nodes_for_slots(servers_needed(check, demand), capacities, policy.launch.instance_types[0].streams)


def queueing(
    policy: PoolPolicy, check: QueueingCheck, value: float, nodes: Sequence[Node], current: int
) -> tuple[int, Reason]:
    """Recommend the fewest nodes whose stream slots meet the service level at ``value`` Erlangs.

    ``nodes`` are the serving and booting nodes (booting capacity is on the way and counts). The
    vote is monotonic in the value: more concurrent streams never need fewer slots.
    """
    slots = servers_needed(check, value)
    have = sum(n.capacity_streams for n in nodes)
    recommendation = nodes_for_slots(slots, [n.capacity_streams for n in nodes],
                                     policy.launch.instance_types[0].streams)
    level = check.service_level
    promise = (f"wait probability ≤ {level.wait_probability:g}" if level.wait_probability is not None
               else f"p{level.quantile * 100:g} wait ≤ {seconds(level.wait or ZERO):g}s")
    if recommendation > current:
        message = (f"{value:g} concurrent streams need {slots} slots for {promise}; {current} nodes have "
                   f"{have}: votes out to {recommendation}")
    elif recommendation < current:
        message = (f"{value:g} concurrent streams need {slots} slots for {promise}; {recommendation} of "
                   f"{current} nodes suffice: votes in to {recommendation}")
    else:
        message = f"{value:g} concurrent streams need {slots} slots for {promise}; {have} slots hold"
    detail: dict[str, Any] = {"query": check.query, "value": value, "slots": slots, "slots_now": have,
                              "vote": vote_of(recommendation, current), "recommendation": recommendation}
    return recommendation, Reason("check", check.name, message, detail)
