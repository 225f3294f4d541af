"""Property tests of the engine's invariants over generated policies, fleets and readings."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_helpers import BASE, NOW, _merge

from autoscaler.domain import Lifecycle, Node, Sample
from autoscaler.policy.checks import servers_needed
from autoscaler.policy.engine import EngineMemory, decide
from autoscaler.policy.load import load_policy
from autoscaler.policy.model import PoolPolicy, QueueingCheck, TargetTrackingCheck

POLICIES = Path(__file__).resolve().parents[2] / "policies"
SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Checks whose value rises with load: target tracking, scale-out bands above, scale-in bands below.
LOAD_CHECKS = ("streams", "gpu", "p95")


@st.composite
def policies(draw: st.DrawFn, *, ceilings: bool = True) -> PoolPolicy:
    """Policies mixing every rule, with load-like checks (a higher value means more load)."""
    low = draw(st.integers(0, 6))
    high = draw(st.integers(max(low, 1), 25))
    tracking = {"name": "streams", "type": "target_tracking", "query": "q1",
                "target": draw(st.sampled_from([3, 5, 7, 8.5])),
                "tolerance": draw(st.sampled_from([0, 0.1, 0.2])),
                "per": draw(st.sampled_from(["node", "pool"]))}
    queueing = {"name": "streams", "type": "queueing", "query": "q1",
                "service_level": draw(st.sampled_from([{"wait_probability": 0.01}, {"wait_probability": 0.2},
                                                       {"wait": "20s", "quantile": 0.95}]))}
    stream_check = draw(st.sampled_from([tracking, tracking, queueing]))
    checks: list[dict[str, Any]] = [
        stream_check,
        {"name": "gpu", "type": "step", "query": "q2", "for_ticks": draw(st.integers(1, 3)),
         "steps": [{"above": 0.9, "change": draw(st.integers(1, 4))},
                   {"below": 0.2, "change": -draw(st.integers(1, 3))}]},
        {"name": "p95", "type": "step", "query": "q3",
         "steps": [{"above": 30, "change_percent": draw(st.sampled_from([10, 50]))},
                   {"below": 2, "change_percent": -draw(st.sampled_from([10, 50]))}]},
    ]
    # Any non-empty subset, the target-tracking check always first (``reading`` looks it up there).
    keep = draw(st.sets(st.sampled_from([1, 2]), max_size=2))
    checks = [checks[0], *(checks[i] for i in sorted(keep))] if draw(st.booleans()) or not keep else [
        checks[i] for i in sorted(keep)]
    schedules: list[dict[str, Any]] = []
    if draw(st.booleans()):
        schedules.append({"name": "floor", "cron": "0 9-11 * * *", "duration": "90m",
                          "min_nodes": draw(st.integers(0, high))})
    if ceilings and draw(st.booleans()):
        schedules.append({"name": "cap", "cron": "30 10 * * *", "duration": "1h",
                          "max_nodes": draw(st.integers(1, 30))})
    behavior = {
        # Zero windows and cooldowns are drawn most often: they are what lets other rules act.
        "scale_in": {"stabilization": draw(st.sampled_from([0, 0, 0, 60, 300])),
                     "policies": draw(st.sampled_from([[], [], [{"nodes": 2, "period": 60}],
                                                       [{"percent": 20, "period": 60}]])),
                     "cooldown": draw(st.sampled_from([0, 0, 60]))},
        "scale_out": {"stabilization": draw(st.sampled_from([0, 0, 30])),
                      "policies": draw(st.sampled_from([[], [], [{"nodes": 3, "period": 60}]])),
                      "cooldown": draw(st.sampled_from([0, 0, 30]))},
        "max_launching": draw(st.sampled_from([None, 2, 5])),
        "min_node_lifetime": draw(st.sampled_from([0, 3600])),
    }
    missing: dict[str, Any] = draw(st.sampled_from([
        {"action": "hold"}, {"action": "keep_at_least", "nodes": 4}, {"action": "fixed", "nodes": 3},
    ]))
    extra: dict[str, Any] = {}
    first = checks[0]
    sizing = first["name"] == "streams" and (first["type"] == "queueing" or first.get("per") == "pool")
    if sizing and draw(st.booleans()):
        extra["look_ahead"] = {"check": "streams", "horizon": "180s",
                               "max_nodes_per_tick": draw(st.integers(1, 3))}
    return PoolPolicy.model_validate(_merge(BASE, {"scaling": {
        **extra, "min_nodes": low, "max_nodes": high, "checks": checks, "schedules": schedules,
        "behavior": behavior, "on_missing_data": {"after_ticks": draw(st.integers(1, 3)), **missing},
    }}))


@st.composite
def fleets(draw: st.DrawFn, most: int = 25) -> list[Node]:
    """Up to ``most`` serving, booting and draining nodes of mixed versions, ages and loads."""
    out: list[Node] = []
    for i in range(draw(st.integers(0, most))):
        state = draw(st.sampled_from([Lifecycle.SERVING] * 4 + [Lifecycle.BOOTING, Lifecycle.DRAINING]))
        out.append(Node(f"n{i}", state, "gpu", 10, draw(st.sampled_from(["v2", "v2", "v1"])),
                        NOW - timedelta(minutes=draw(st.integers(0, 600))),
                        active_streams=draw(st.none() | st.floats(0, 12)), image="img-2"))
    return out


readings = st.floats(0, 100, allow_nan=False)


def reading(data: st.DataObject, pol: PoolPolicy, name: str) -> float:
    """A reading near where ``name``'s rules change their vote (band edges, tolerance edges)."""
    first = pol.scaling.checks[0]
    if name == "streams" and isinstance(first, QueueingCheck):
        return data.draw(st.sampled_from([0.0, 5.0, 30.0, 79.5, 80.0, 150.0]) | st.floats(0, 300))
    if name == "streams" and isinstance(first, TargetTrackingCheck):
        target = first.target
        return float(target * data.draw(st.sampled_from([0.0, 0.5, 0.89, 0.9, 1.0, 1.1, 1.11, 2.0])
                                        | st.floats(0, 3)))
    if name in ("streams", "gpu"):
        return data.draw(st.sampled_from([0.1, 0.2, 0.5, 0.9, 0.95]) | st.floats(0, 1.2))
    return data.draw(st.sampled_from([0.0, 1.9, 2.0, 10.0, 30.0, 31.0]) | readings)
times = st.integers(0, 86_400).map(lambda s: NOW + timedelta(seconds=s))


@st.composite
def memories(draw: st.DrawFn, at: Any) -> EngineMemory:
    """A plausible memory: past recommendations and moves, streaks, blind ticks."""
    past = draw(st.lists(st.integers(0, 30), max_size=8))
    recs = [(at - timedelta(seconds=15 * (len(past) - k)), c) for k, c in enumerate(past)]
    events = [(at - timedelta(seconds=draw(st.integers(1, 120))), draw(st.integers(-3, 3)))
              for _ in range(draw(st.integers(0, 3)))]
    return EngineMemory(recommendations=recs, scale_events=events,
                        last_scale_out=draw(st.none() | st.just(at - timedelta(seconds=20))),
                        last_scale_in=draw(st.none() | st.just(at - timedelta(seconds=20))),
                        streaks={"gpu#0": draw(st.integers(0, 3)), "p95#1": draw(st.integers(0, 3))},
                        missing_ticks=draw(st.integers(0, 5)),
                        trend=[(at - timedelta(seconds=15 * (k + 1)), v)
                               for k, v in enumerate(draw(st.lists(st.floats(0, 300), max_size=6)))][::-1])


@SETTINGS
@given(data=st.data())
def test_desired_always_within_min_max(data: st.DataObject) -> None:
    """Whatever the inputs, the desired count lies within [min_nodes, max_nodes]."""
    pol = data.draw(policies())
    at = data.draw(times)
    values = {name: Sample(data.draw(st.none() | st.just(reading(data, pol, name)))) for name in LOAD_CHECKS}
    ev = decide(pol, values, data.draw(fleets()), data.draw(memories(at)), at)
    assert pol.scaling.min_nodes <= ev.decision.desired <= pol.scaling.max_nodes
    assert ev.decision.current - len(ev.decision.victims) >= pol.scaling.min_nodes or not ev.decision.victims


@SETTINGS
@given(data=st.data())
def test_missing_metric_never_lowers_the_count(data: st.DataObject) -> None:
    """A tick in which any metric is missing, NaN or erroring never removes a node."""
    pol = data.draw(policies(ceilings=False))
    at = data.draw(times)
    values: dict[str, Sample] = {name: Sample(reading(data, pol, name)) for name in LOAD_CHECKS}
    blind = data.draw(st.sets(st.sampled_from([c.name for c in pol.scaling.checks]), min_size=1))
    for name in blind:
        bad = data.draw(st.sampled_from([None, Sample(math.nan), Sample(math.inf),
                                         Sample.missing("timeout")]))
        if bad is None:
            del values[name]
        else:
            values[name] = bad
    # At most max_nodes nodes: above it, the bound (not the data) removes nodes, by design.
    fleet = data.draw(fleets(most=pol.scaling.max_nodes))
    current = sum(n.lifecycle in (Lifecycle.SERVING, Lifecycle.BOOTING) for n in fleet)
    ev = decide(pol, values, fleet, data.draw(memories(at)), at)
    assert ev.decision.victims == ()
    assert ev.decision.desired >= current


@SETTINGS
@given(data=st.data())
def test_more_load_never_yields_fewer_nodes(data: st.DataObject) -> None:
    """Raising any load reading (all else equal) never lowers the desired count."""
    pol = data.draw(policies())
    at = data.draw(times)
    fleet = data.draw(fleets())
    memory = data.draw(memories(at))
    low = {name: None if data.draw(st.booleans()) and data.draw(st.booleans()) else reading(data, pol, name)
           for name in LOAD_CHECKS}
    # A second reading near the rule edges, kept only where it is higher: edges are where a rule
    # could turn more load into fewer nodes.
    high = {name: None if v is None else max(v, reading(data, pol, name)) for name, v in low.items()}
    a = decide(pol, {k: Sample(v) for k, v in low.items()}, fleet, memory, at)
    b = decide(pol, {k: Sample(v) for k, v in high.items()}, fleet, memory, at)
    assert b.decision.desired >= a.decision.desired
    assert b.decision.launch >= a.decision.launch
    assert len(b.decision.victims) <= len(a.decision.victims)


def _simulate(pol: PoolPolicy, demand: float, start: int, ticks: int) -> list[int]:
    """Feed decisions back into a fleet under constant demand; return the count after each tick.

    Launched nodes serve from the next tick; victims leave at once. Readings are what a real pool
    under ``demand`` concurrent streams would report.
    """
    # Nodes run what the policy launches (a rollout of outdated nodes is tested on its own).
    version, image = pol.launch.model_version, pol.launch.image.id
    fleet = [Node(f"n{i}", Lifecycle.SERVING, "gpu", 10, version, NOW - timedelta(hours=3), image=image)
             for i in range(start)]
    memory = EngineMemory()
    counts = []
    serial = start
    for tick in range(ticks):
        at = NOW + tick * pol.scaling.tick
        ready = len(fleet)
        per_node = demand / ready if ready else math.nan
        active = min(10.0, per_node) if ready else 0.0
        values = {
            "streams": Sample(demand),
            "streams-per-node": Sample(per_node if ready else None),
            "gpu-memory": Sample((3400 + 1900 * active) / 24576 if ready else None),
            "queued-streams": Sample(max(0.0, demand - 10 * ready)),
            "p95-latency": Sample(60.0 if demand <= 10 * ready else 1000.0),
        }
        fleet = [Node(n.id, n.lifecycle, n.instance_type, n.capacity_streams, n.model_version, n.launched_at,
                      active_streams=active, image=n.image) for n in fleet]
        ev = decide(pol, values, fleet, memory, at)
        memory = ev.memory
        gone = set(ev.decision.victims)
        fleet = [n for n in fleet if n.id not in gone]
        for _ in range(ev.decision.launch):
            fleet.append(Node(f"n{serial}", Lifecycle.SERVING, "gpu", 10, version, at, image=image))
            serial += 1
        counts.append(len(fleet))
    return counts


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(["asr-local.yaml", "asr-aws.yaml", "hpa-like.yaml"]),
       demand=st.floats(0, 200), start=st.integers(1, 20))
def test_constant_input_does_not_oscillate(name: str, demand: float, start: int) -> None:
    """Under constant demand the shipped policies move one way, then settle: no flapping."""
    pol = load_policy(POLICIES / name)
    # Schedules are calendar input, not load; take them out so the input is truly constant.
    pol = pol.model_copy(update={"scaling": pol.scaling.model_copy(update={"schedules": []})})
    # 40 simulated minutes, or three scale-in windows: enough for the slowest scale-in to finish.
    window = pol.scaling.behavior.scale_in.stabilization.total_seconds()
    ticks = int(max(2400, 3 * window) / pol.scaling.tick.total_seconds())
    counts = _simulate(pol, demand, start, ticks=ticks)
    assert not _flaps(start, counts), counts
    # And it settles where its sizing check is satisfied (or at a bound): it does scale in.
    tracking = pol.scaling.checks[0]
    final, low, high = counts[-1], pol.scaling.min_nodes, pol.scaling.max_nodes
    if isinstance(tracking, QueueingCheck):
        need = math.ceil(servers_needed(tracking, demand) / 10)
        assert final == min(high, max(low, need)) or (final > need and final == high), counts
        return
    assert isinstance(tracking, TargetTrackingCheck)
    per_node = demand / final
    band = (tracking.target * (1 - tracking.tolerance) - 1e-6,
            tracking.target * (1 + tracking.tolerance) + 1e-6)
    assert final == high or per_node <= band[1], counts
    assert final == low or per_node >= band[0] or final == math.ceil(demand / tracking.target - 1e-9), counts


def _flaps(start: int, counts: list[int]) -> bool:
    """True when the counts change direction, or still move in the last 20 ticks."""
    moves = [b - a for a, b in zip([start, *counts], counts, strict=False) if b != a]
    one_way = all(m > 0 for m in moves) or all(m < 0 for m in moves)
    return not one_way or len(set(counts[-20:])) != 1


def test_flap_detector_catches_a_flapping_policy() -> None:
    """The oscillation harness does detect a policy whose rules fight (so the property can fail)."""
    pol = PoolPolicy.model_validate(_merge(BASE, {"scaling": {"min_nodes": 1, "max_nodes": 30, "checks": [
        {"name": "streams-per-node", "type": "target_tracking", "query": "q", "target": 7},
        # +3 nodes above 60 % GPU memory (6.3 streams a node), below the tracking target of 7: at
        # 7 streams a node it adds 3, then target tracking finds 5.4 streams a node and removes them.
        {"name": "gpu-memory", "type": "step", "query": "q", "steps": [{"above": 0.6, "change": 3}]},
    ]}}))
    counts = _simulate(pol, demand=70.0, start=10, ticks=60)
    assert _flaps(10, counts), counts


@settings(max_examples=500, deadline=None)
@given(target=st.sampled_from([3.0, 7.0, 8.5]), tolerance=st.sampled_from([0.0, 0.1, 0.2]),
       per=st.sampled_from(["node", "pool"]), serving=st.integers(0, 12), booting=st.integers(0, 6),
       low=st.floats(0, 3), extra=st.floats(0, 1))
def test_more_load_never_fewer_nodes_target_tracking_with_booting(
    *, target: float, tolerance: float, per: str, serving: int, booting: int, low: float, extra: float
) -> None:
    """Target tracking alone stays monotonic in its value while booting nodes are on the way."""
    pol = PoolPolicy.model_validate(_merge(BASE, {"scaling": {"checks": [
        {"name": "streams", "type": "target_tracking", "query": "q", "target": target,
         "tolerance": tolerance, "per": per}]}}))
    fleet = [Node(f"s{i}", Lifecycle.SERVING, "gpu", 10, "v2", NOW - timedelta(hours=1), image="img-2")
             for i in range(serving)]
    fleet += [Node(f"b{i}", Lifecycle.BOOTING, "gpu", 10, "v2", NOW, image="img-2") for i in range(booting)]
    scale = target * (serving if per == "pool" else 1)
    a = decide(pol, {"streams": Sample(low * scale)}, fleet, EngineMemory(), NOW)
    b = decide(pol, {"streams": Sample((low + extra) * scale)}, fleet, EngineMemory(), NOW)
    assert b.decision.desired >= a.decision.desired
