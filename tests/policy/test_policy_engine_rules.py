"""Table tests of every rule of the decision engine, with an injected clock."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from policy_helpers import NOW, STREAMS, kinds, nodes, policy, reason, run, samples

from autoscaler.domain import Direction, Lifecycle, Node, Sample
from autoscaler.policy.engine import EngineMemory, decide

GPU_STEP = {"name": "gpu", "type": "step", "query": "max(gpu_mem)", "steps": [{"above": 0.9, "change": 2}]}


# ------------------------------------------------------------------------------------ target tracking
@pytest.mark.parametrize(
    ("check", "serving", "booting", "value", "desired", "vote"),
    [
        pytest.param({}, 4, 0, 10.0, 6, "out", id="above-target-ceil"),  # ceil(4*10/7) = 6
        pytest.param({}, 4, 0, 7.5, 4, "hold", id="within-default-tolerance"),  # 7 % off: holds
        pytest.param({}, 4, 0, 7.7, 4, "hold", id="tolerance-edge-inclusive"),  # exactly 10 %
        pytest.param({}, 4, 0, 7.8, 5, "out", id="just-outside-tolerance"),
        pytest.param({"tolerance": 0}, 4, 0, 7.1, 5, "out", id="zero-tolerance"),
        pytest.param({}, 6, 0, 3.0, 3, "in", id="below-target-ceil"),  # ceil(6*3/7) = 3
        pytest.param({}, 7, 0, 7.0, 7, "hold", id="exact-no-float-noise"),
        pytest.param({"per": "pool"}, 2, 0, 30.0, 5, "out", id="per-pool-total"),  # ceil(30/7)
        pytest.param({"per": "pool"}, 0, 0, 15.0, 3, "out", id="per-pool-from-zero"),
        pytest.param({}, 0, 2, 9.0, 2, "hold", id="per-node-no-serving-holds"),
        pytest.param({}, 4, 2, 10.0, 6, "hold", id="booting-is-on-the-way"),
        pytest.param({}, 4, 3, 10.0, 7, "hold", id="above-target-never-votes-in"),
        pytest.param({"target": 70, "per": "node"}, 3, 0, 95.0, 5, "out", id="any-promql-any-unit"),
    ],
)
def test_target_tracking(*, check: dict[str, Any], serving: int, booting: int, value: float, desired: int,
                         vote: str) -> None:
    """Target tracking recommends ceil(serving × value / target) outside its tolerance band."""
    pol = policy(checks=[{**STREAMS, **check}])
    ev = run(pol, samples(streams=value), nodes(serving, booting))
    assert ev.decision.desired == desired
    r = reason(ev, "check", "streams")
    assert r.detail["vote"] == vote
    assert r.detail["value"] == value
    assert r.detail["query"] == STREAMS["query"]


def test_target_tracking_launches_difference_and_no_double_scale_out() -> None:
    """A scale-out launches desired − current; next tick the booting nodes count, so nothing more."""
    pol = policy(checks=[STREAMS])
    first = run(pol, samples(streams=10.0), nodes(4))
    assert (first.decision.launch, first.decision.direction) == (2, Direction.OUT)
    second = run(pol, samples(streams=10.0), nodes(4, booting=2), first.memory, NOW + timedelta(seconds=15))
    assert second.decision.launch == 0
    assert second.decision.direction == Direction.HOLD


# ------------------------------------------------------------------------------------------ step rules
def test_step_waits_for_consecutive_ticks_then_adds() -> None:
    """A step band votes only after for_ticks consecutive ticks inside it."""
    pol = policy(checks=[{**GPU_STEP, "for_ticks": 2}])
    t1 = run(pol, samples(gpu=0.95), nodes(5))
    assert t1.decision.desired == 5
    assert "1 of 2 ticks" in reason(t1, "check", "gpu").message
    t2 = run(pol, samples(gpu=0.95), nodes(5), t1.memory, NOW + timedelta(seconds=15))
    assert (t2.decision.desired, t2.decision.launch) == (7, 2)


def test_step_streak_resets_outside_band() -> None:
    """Leaving the band resets its streak: ticks must be consecutive."""
    pol = policy(checks=[{**GPU_STEP, "for_ticks": 2}])
    memory = EngineMemory()
    for i, value in enumerate((0.95, 0.5, 0.95)):
        ev = run(pol, samples(gpu=value), nodes(5), memory, NOW + timedelta(seconds=15 * i))
        memory = ev.memory
        assert ev.decision.desired == 5


def test_step_streak_resets_on_missing_data() -> None:
    """A tick without data breaks the streak like a tick outside the band."""
    pol = policy(checks=[{**GPU_STEP, "for_ticks": 2}])
    t1 = run(pol, samples(gpu=0.95), nodes(5))
    t2 = run(pol, samples(gpu=None), nodes(5), t1.memory, NOW + timedelta(seconds=15))
    t3 = run(pol, samples(gpu=0.95), nodes(5), t2.memory, NOW + timedelta(seconds=30))
    assert t3.decision.desired == 5


@pytest.mark.parametrize(
    ("steps", "value", "serving", "booting", "desired"),
    [
        pytest.param([{"above": 0.9, "change": 2}], 0.95, 5, 0, 7, id="above-adds-n"),
        pytest.param([{"above": 0.9, "change": 2}], 0.9, 5, 0, 5, id="bound-is-strict"),
        pytest.param([{"above": 0.9, "change": 2}], 0.95, 5, 1, 7, id="booting-counts-toward-n"),
        pytest.param([{"above": 0.9, "change": 2}], 0.95, 5, 2, 7, id="booting-covers-n"),
        pytest.param([{"above": 0.9, "change_percent": 50}], 0.95, 4, 0, 6, id="percent-of-serving"),
        pytest.param([{"above": 0.9, "change_percent": 10}], 0.95, 4, 0, 5, id="percent-at-least-one"),
        pytest.param([{"below": 0.2, "change": -1}], 0.1, 5, 0, 4, id="below-removes-n"),
        pytest.param([{"below": 0.2, "change_percent": -50}], 0.1, 6, 0, 3, id="percent-in"),
        pytest.param([{"above": 0.5, "change": 1}, {"above": 0.9, "change": 3}], 0.95, 4, 0, 7,
                     id="largest-band-wins"),
        pytest.param([{"above": 0.5, "change": 1}, {"above": 0.9, "change": 3}], 0.6, 4, 0, 5,
                     id="lower-band-only"),
        pytest.param([{"below": 0.3, "change": -1}, {"below": 0.1, "change": -2}], 0.05, 6, 0, 4,
                     id="deepest-in-band-wins"),
        pytest.param([{"below": 0.8, "change": -1}, {"above": 0.5, "change": 1}], 0.6, 4, 0, 5,
                     id="out-band-beats-in-band"),
    ],
)
def test_step_bands(steps: list[dict[str, Any]], value: float, serving: int, booting: int,
                    desired: int) -> None:
    """Step bands map a metric's band to +N/−N nodes or a percentage."""
    pol = policy(checks=[{**GPU_STEP, "steps": steps}])
    ev = run(pol, samples(gpu=value), nodes(serving, booting))
    assert ev.decision.desired == desired


# ---------------------------------------------------------------------------------------- combining
GPU_BANDS = {**GPU_STEP, "steps": [{"above": 0.9, "change": 2}, {"below": 0.2, "change": -1}]}


@pytest.mark.parametrize(
    ("a", "b", "desired"),
    [
        pytest.param(10.0, 0.5, 6, id="out-beats-hold"),  # streams out to 6, gpu holds
        pytest.param(2.0, 0.5, 4, id="hold-beats-in"),  # streams in to 2, gpu holds at 4
        pytest.param(10.0, 0.95, 6, id="larger-out-wins"),  # 6 vs 4+2 = 6
        pytest.param(14.0, 0.95, 8, id="larger-out-wins-2"),  # ceil(4*14/7) = 8 vs 6
        pytest.param(7.0, 0.95, 6, id="step-out-beats-tracking-hold"),
        pytest.param(2.0, 0.1, 3, id="larger-in-wins"),  # streams in to 2, gpu in to 3
    ],
)
def test_combining(a: float, b: float, desired: int) -> None:
    """Scale-out beats hold beats scale-in; among one direction the larger count wins."""
    pol = policy(checks=[STREAMS, GPU_BANDS])
    ev = run(pol, samples(streams=a, gpu=b), nodes(4))
    assert ev.decision.desired == desired


@pytest.mark.parametrize(
    ("gpu", "memory_streak", "vote", "desired"),
    [
        pytest.param(0.5, 0, "abstain", 2, id="no-band-abstains"),
        pytest.param(0.95, 0, "hold", 4, id="pending-out-band-holds"),
        pytest.param(0.95, 1, "out", 6, id="active-out-band"),
    ],
)
def test_scale_out_only_step_does_not_block_scale_in(gpu: float, memory_streak: int, vote: str,
                                                     desired: int) -> None:
    """A rule that only adds nodes has no say on scale-in until its band is entered."""
    pol = policy(checks=[STREAMS, {**GPU_STEP, "for_ticks": 2}])
    ev = run(pol, samples(streams=2.0, gpu=gpu), nodes(4), EngineMemory(streaks={"gpu#0": memory_streak}))
    assert reason(ev, "check", "gpu").detail["vote"] == vote
    assert ev.decision.desired == desired


def test_combining_two_scale_ins_keeps_larger_count() -> None:
    """Two scale-in votes: the larger count (the smaller removal) wins."""
    pol = policy(checks=[STREAMS, {**STREAMS, "name": "other", "target": 3}])
    ev = run(pol, samples(streams=2.0, other=2.0), nodes(6))  # ceil(12/7)=2 vs ceil(12/3)=4
    assert ev.decision.desired == 4


# ------------------------------------------------------------------------------------------ no data
@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(None, id="missing-key"),
        pytest.param(Sample.missing("timeout"), id="error"),
        pytest.param(Sample(math.nan), id="nan"),
        pytest.param(Sample(math.inf), id="inf"),
        pytest.param(Sample(None, error="stale"), id="stale"),
    ],
)
def test_missing_data_votes_hold_and_blocks_scale_in(bad: Sample | None) -> None:
    """A missing, erroring, NaN or stale metric votes hold, and no other check may scale in."""
    pol = policy(checks=[STREAMS, GPU_STEP])
    values = {"streams": Sample(1.0)}  # streams alone would scale 6 → 1
    if bad is not None:
        values["gpu"] = bad
    ev = run(pol, values, nodes(6))
    assert ev.decision.desired == 6
    assert ev.decision.victims == ()
    assert reason(ev, "check", "gpu").detail["vote"] == "hold"
    assert reason(ev, "fallback", "missing-data").detail["after"] == 6


def test_missing_data_lets_other_checks_scale_out() -> None:
    """A blind check holds; a check with data can still scale out."""
    pol = policy(checks=[STREAMS, GPU_STEP])
    ev = run(pol, samples(streams=10.0, gpu=None), nodes(4))
    assert ev.decision.launch == 2


@pytest.mark.parametrize(
    ("fallback", "serving", "ticks_desired"),
    [
        pytest.param({"after_ticks": 2, "action": "hold"}, 4, [4, 4, 4], id="hold"),
        pytest.param({"after_ticks": 2, "action": "keep_at_least", "nodes": 6}, 4, [4, 6, 6], id="keep-up"),
        pytest.param({"after_ticks": 2, "action": "keep_at_least", "nodes": 3}, 4, [4, 4, 4],
                     id="keep-never-lowers"),
        pytest.param({"after_ticks": 3, "action": "fixed", "nodes": 8}, 4, [4, 4, 8], id="fixed-up"),
        pytest.param({"after_ticks": 1, "action": "fixed", "nodes": 2}, 5, [5, 5, 5],
                     id="fixed-never-removes"),
    ],
)
def test_missing_data_fallback_after_k_ticks(fallback: dict[str, Any], serving: int,
                                             ticks_desired: list[int]) -> None:
    """After K consecutive blind ticks the policy's fallback applies, and it never removes a node."""
    pol = policy(checks=[STREAMS], on_missing_data=fallback)
    memory = EngineMemory()
    seen = []
    for i in range(3):
        ev = run(pol, samples(streams=None), nodes(serving), memory, NOW + timedelta(seconds=15 * i))
        memory = ev.memory
        seen.append(ev.decision.desired)
        assert ev.decision.victims == ()
    assert seen == ticks_desired
    assert memory.missing_ticks == 3


def test_missing_ticks_reset_when_data_returns() -> None:
    """One tick with every check answering resets the blind-tick count."""
    pol = policy(checks=[STREAMS], on_missing_data={"after_ticks": 2, "action": "fixed", "nodes": 9})
    t1 = run(pol, samples(streams=None), nodes(4))
    t2 = run(pol, samples(streams=7.0), nodes(4), t1.memory, NOW + timedelta(seconds=15))
    t3 = run(pol, samples(streams=None), nodes(4), t2.memory, NOW + timedelta(seconds=30))
    assert (t2.memory.missing_ticks, t3.memory.missing_ticks) == (0, 1)
    assert t3.decision.desired == 4


# ------------------------------------------------------------------------------------------ schedules
SHANGHAI_MORNINGS = {"name": "mornings", "timezone": "Asia/Shanghai", "cron": "0 9 * * 1-5",
                     "duration": "3h", "min_nodes": 8}
# 2025-03-03 is a Monday; 09:00 in Shanghai is 01:00 UTC.
OPEN = datetime(2025, 3, 3, 1, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("at", "lead", "desired"),
    [
        pytest.param(OPEN + timedelta(hours=1), "5m", 8, id="inside-window"),
        pytest.param(OPEN - timedelta(minutes=5), "5m", 8, id="lead-start"),
        pytest.param(OPEN - timedelta(minutes=5, seconds=1), "5m", 3, id="before-lead"),
        pytest.param(OPEN + timedelta(hours=3), "5m", 3, id="window-closed"),
        pytest.param(OPEN + timedelta(hours=3) - timedelta(seconds=1), "5m", 8, id="last-second"),
        pytest.param(OPEN + timedelta(days=5), "5m", 3, id="saturday-no-window"),
        pytest.param(OPEN - timedelta(minutes=9), None, 8, id="lead-defaults-to-boot-timeout"),
    ],
)
def test_scheduled_floor_with_boot_lead(at: datetime, lead: str | None, desired: int) -> None:
    """A scheduled floor applies over its cron window in its time zone, boot_lead ahead of it."""
    extra: dict[str, Any] = {"schedules": [SHANGHAI_MORNINGS]}
    if lead is not None:
        extra["boot_lead"] = lead
    pol = policy(checks=[STREAMS], **extra)
    if lead is None:
        assert pol.health.boot_timeout == timedelta(minutes=10)
    ev = run(pol, samples(streams=7.0), nodes(3, now=at), now=at)
    assert ev.decision.desired == desired
    if desired == 8:
        assert reason(ev, "schedule", "mornings").detail["after"] == 8


@pytest.mark.parametrize(
    ("at", "desired"),
    [
        pytest.param(datetime(2025, 9, 1, 0, 0, tzinfo=UTC) - timedelta(hours=8, minutes=10), 12,
                     id="first-day-with-lead"),
        pytest.param(datetime(2025, 9, 7, 15, 59, tzinfo=UTC), 12, id="last-day-until-midnight-local"),
        pytest.param(datetime(2025, 9, 7, 16, 0, tzinfo=UTC), 4, id="after-range"),
    ],
)
def test_scheduled_date_range_floor(at: datetime, desired: int) -> None:
    """A date-range floor covers whole local days, from the first date's midnight minus lead."""
    term = {"name": "term", "timezone": "Asia/Shanghai", "min_nodes": 12,
            "dates": [{"start": "2025-09-01", "end": "2025-09-07"}]}
    pol = policy(checks=[STREAMS], schedules=[term], boot_lead="10m")
    ev = run(pol, samples(streams=7.0), nodes(4, now=at), now=at)
    assert ev.decision.desired == desired


def test_scheduled_cron_within_dates_only() -> None:
    """A cron window with dates counts only on those dates (a conference day)."""
    day = {"name": "conf", "timezone": "Europe/Dublin", "cron": "0 8 * * *", "duration": "10h",
           "dates": [{"start": "2025-11-20", "end": "2025-11-20"}], "min_nodes": 9}
    pol = policy(checks=[STREAMS], schedules=[day], boot_lead=0)
    on = datetime(2025, 11, 20, 12, 0, tzinfo=UTC)
    off = datetime(2025, 11, 21, 12, 0, tzinfo=UTC)
    assert run(pol, samples(streams=7.0), nodes(4, now=on), now=on).decision.desired == 9
    assert run(pol, samples(streams=7.0), nodes(4, now=off), now=off).decision.desired == 4


def test_scheduled_ceiling_has_no_lead_and_beats_floor() -> None:
    """A ceiling caps the count only inside its window, and wins over an open floor."""
    cap = {"name": "cap", "timezone": "UTC", "cron": "0 12 * * *", "duration": "1h", "max_nodes": 3}
    floor = {"name": "floor", "timezone": "UTC", "cron": "0 12 * * *", "duration": "1h", "min_nodes": 6}
    pol = policy(checks=[STREAMS], schedules=[cap, floor], boot_lead="30m")
    before = datetime(2025, 3, 3, 11, 45, tzinfo=UTC)  # inside floor's lead, outside the cap
    inside = datetime(2025, 3, 3, 12, 30, tzinfo=UTC)
    assert run(pol, samples(streams=7.0), nodes(5, now=before), now=before).decision.desired == 6
    ev = run(pol, samples(streams=10.0), nodes(5, now=inside), now=inside)
    assert ev.decision.desired == 3
    assert reason(ev, "schedule", "cap").detail["after"] == 3


# ------------------------------------------------------------------------------ per-direction behaviour
def test_scale_in_stabilization_uses_highest_recommendation_in_window() -> None:
    """Scale-in follows the highest recommendation of the window (Kubernetes HPA's meaning)."""
    pol = policy(checks=[STREAMS], behavior={"scale_in": {"stabilization": "60s"}})
    fleet = nodes(10)
    memory = EngineMemory()
    desired = []
    # Recommendations: 10 (hold), 5, 3, 3, 3, 3 at 20 s steps; like HPA, the window holds the
    # recommendations made strictly after now − 60 s.
    for i, value in enumerate((7.0, 3.5, 2.1, 2.1, 2.1, 2.1)):
        ev = run(pol, samples(streams=value), fleet, memory, NOW + timedelta(seconds=20 * i))
        memory = ev.memory
        desired.append(ev.decision.desired)
    assert desired == [10, 10, 10, 5, 3, 3]
    assert reason(ev, "check").detail["recommendation"] == 3


def test_scale_in_stabilization_reason() -> None:
    """A held-back scale-in says which window held it and at what count."""
    pol = policy(checks=[STREAMS], behavior={"scale_in": {"stabilization": "300s"}})
    t1 = run(pol, samples(streams=7.0), nodes(10))
    t2 = run(pol, samples(streams=2.1), nodes(10), t1.memory, NOW + timedelta(seconds=15))
    r = reason(t2, "window", "scale-in-stabilization")
    assert (r.detail["before"], r.detail["after"]) == (3, 10)


def test_scale_out_stabilization_uses_lowest_recommendation_in_window() -> None:
    """Scale-out follows the lowest recommendation of its window when one is set."""
    pol = policy(checks=[STREAMS], behavior={"scale_out": {"stabilization": "30s"}})
    t1 = run(pol, samples(streams=7.0), nodes(4))
    t2 = run(pol, samples(streams=14.0), nodes(4), t1.memory, NOW + timedelta(seconds=15))
    assert t2.decision.desired == 4
    t3 = run(pol, samples(streams=14.0), nodes(4), t2.memory, NOW + timedelta(seconds=46))
    assert t3.decision.desired == 8


@pytest.mark.parametrize(
    ("rate", "desired"),
    [
        pytest.param({"policies": [{"nodes": 2, "period": "1m"}]}, 6, id="nodes"),
        pytest.param({"policies": [{"percent": 50, "period": "1m"}]}, 6, id="percent"),
        pytest.param({"policies": [{"percent": 10, "period": "1m"}]}, 5, id="percent-at-least-one"),
        pytest.param({"policies": [{"nodes": 1, "period": "1m"}, {"nodes": 3, "period": "1m"}]}, 7,
                     id="select-max"),
        pytest.param({"policies": [{"nodes": 1, "period": "1m"}, {"nodes": 3, "period": "1m"}],
                      "select": "min"}, 5, id="select-min"),
    ],
)
def test_scale_out_rate_limits(rate: dict[str, Any], desired: int) -> None:
    """Rate limits cap nodes (or percent of the count) added per period; select picks among them."""
    pol = policy(checks=[STREAMS], behavior={"scale_out": rate})
    ev = run(pol, samples(streams=20.0), nodes(4))  # wants ceil(80/7) = 12
    assert ev.decision.desired == desired
    assert reason(ev, "rate", "scale-out").detail["after"] == desired


def test_rate_limit_counts_moves_within_period() -> None:
    """Nodes moved earlier in the period use up the allowance; after the period it is whole again."""
    pol = policy(checks=[STREAMS], behavior={"scale_in": {"policies": [{"nodes": 2, "period": "1m"}]}})
    t1 = run(pol, samples(streams=1.0), nodes(10))
    assert len(t1.decision.victims) == 2
    t2 = run(pol, samples(streams=1.0), nodes(8), t1.memory, NOW + timedelta(seconds=30))
    assert t2.decision.victims == ()
    assert reason(t2, "rate", "scale-in").detail["allowed"] == 0
    t3 = run(pol, samples(streams=1.0), nodes(8), t2.memory, NOW + timedelta(seconds=61))
    assert len(t3.decision.victims) == 2


@pytest.mark.parametrize(
    ("direction", "value", "serving", "elapsed", "moves"),
    [
        pytest.param("scale_out", 14.0, 4, 30, False, id="out-in-cooldown"),
        pytest.param("scale_out", 14.0, 4, 61, True, id="out-after-cooldown"),
        pytest.param("scale_in", 1.0, 8, 30, False, id="in-in-cooldown"),
        pytest.param("scale_in", 1.0, 8, 61, True, id="in-after-cooldown"),
    ],
)
def test_cooldowns(direction: str, value: float, serving: int, elapsed: int, moves: bool) -> None:
    """No move in a direction within its cooldown after the last move that way."""
    pol = policy(checks=[STREAMS], behavior={direction: {"cooldown": "60s"}})
    field = "last_scale_out" if direction == "scale_out" else "last_scale_in"
    memory = EngineMemory.model_validate({field: NOW})
    ev = run(pol, samples(streams=value), nodes(serving), memory, NOW + timedelta(seconds=elapsed))
    assert (ev.decision.direction != Direction.HOLD) is moves
    if not moves:
        assert reason(ev, "cooldown").detail["after"] == serving


def test_cooldown_does_not_block_the_other_direction() -> None:
    """A scale-out cooldown does not delay a scale-in."""
    pol = policy(checks=[STREAMS], behavior={"scale_out": {"cooldown": "10m"}})
    ev = run(pol, samples(streams=1.0), nodes(8), EngineMemory(last_scale_out=NOW),
             NOW + timedelta(seconds=5))
    assert ev.decision.direction == Direction.IN


@pytest.mark.parametrize(
    ("value", "serving", "desired", "bound"),
    [
        pytest.param(1.0, 5, 3, "min_nodes", id="min"),
        pytest.param(50.0, 5, 9, "max_nodes", id="max"),
        pytest.param(7.0, 12, 9, "max_nodes", id="above-max-lowered"),
        pytest.param(7.0, 1, 3, "min_nodes", id="below-min-raised"),
    ],
)
def test_min_max_bounds(value: float, serving: int, desired: int, bound: str) -> None:
    """min_nodes and max_nodes clamp the result, and say so."""
    pol = policy(min_nodes=3, max_nodes=9, checks=[STREAMS])
    ev = run(pol, samples(streams=value), nodes(serving))
    assert ev.decision.desired == desired
    assert reason(ev, "bound", bound).detail["after"] == desired


def test_bounds_override_cooldown() -> None:
    """min_nodes is absolute: it applies even during a cooldown."""
    pol = policy(min_nodes=3, checks=[STREAMS], behavior={"scale_out": {"cooldown": "10m"}})
    ev = run(pol, samples(streams=7.0), nodes(1), EngineMemory(last_scale_out=NOW), NOW)
    assert ev.decision.launch == 2


def test_max_launching_caps_launches() -> None:
    """No more than max_launching nodes boot at once; desired stays the target."""
    pol = policy(checks=[STREAMS], behavior={"max_launching": 3})
    ev = run(pol, samples(streams=21.0), nodes(4, booting=1))  # wants 12, 5 current
    assert (ev.decision.desired, ev.decision.launch) == (12, 2)
    assert reason(ev, "capacity", "max_launching").detail == {"wanted": 7, "launch": 2, "booting": 1}


def test_min_node_lifetime_protects_young_nodes() -> None:
    """A node younger than min_node_lifetime is not a victim; the shortfall is explained."""
    pol = policy(checks=[STREAMS], behavior={"min_node_lifetime": "1h"})
    fleet = nodes(2, age=timedelta(hours=2)) + [
        Node(f"y{i}", Lifecycle.SERVING, "gpu", 10, "v2", NOW - timedelta(minutes=10), active_streams=0.0)
        for i in range(3)
    ]
    ev = run(pol, samples(streams=1.0), fleet)  # wants 1: four victims needed, two old enough
    assert set(ev.decision.victims) == {"s0", "s1"}
    assert reason(ev, "victim", "shortfall").detail == {
        "needed": 4, "chosen": 2, "too_young": 3, "kept_last_serving": False}


# --------------------------------------------------------------------------------------- nodes, victims
def test_draining_nodes_are_not_capacity() -> None:
    """Draining nodes are not counted: 3 serving + 2 draining is a pool of 3."""
    pol = policy(checks=[STREAMS])
    ev = run(pol, samples(streams=10.0), nodes(3, draining=2))
    assert (ev.decision.ready, ev.decision.draining, ev.decision.current) == (3, 2, 3)
    assert ev.decision.launch == 2  # ceil(3*10/7) = 5


def test_launching_nodes_count_as_booting() -> None:
    """A node the provider is still launching is on the way, like a booting one."""
    pol = policy(checks=[STREAMS])
    fleet = [*nodes(4), Node("l0", Lifecycle.LAUNCHING, "gpu", 10, "v2", NOW)]
    ev = run(pol, samples(streams=10.0), fleet)
    assert (ev.decision.booting, ev.decision.launch) == (1, 1)


def test_terminated_nodes_are_ignored() -> None:
    """Terminated nodes are neither capacity nor victims."""
    pol = policy(checks=[STREAMS])
    fleet = [*nodes(4), Node("t0", Lifecycle.TERMINATED, "gpu", 10, "v2", NOW)]
    ev = run(pol, samples(streams=7.0), fleet)
    assert ev.decision.current == 4


def _node(node_id: str, *, streams: float | None, minutes_old: int, version: str = "v2",
          image: str = "img-2", lifecycle: Lifecycle = Lifecycle.SERVING) -> Node:
    return Node(node_id, lifecycle, "gpu", 10, version, NOW - timedelta(minutes=minutes_old),
                active_streams=streams, image=image)


def test_victim_order() -> None:
    """Victims: outdated version or image first, then fewest active streams, then youngest."""
    fleet = [
        _node("busy-old", streams=9, minutes_old=300),
        _node("idle-old", streams=1, minutes_old=300),
        _node("idle-young", streams=1, minutes_old=60),
        _node("old-version", streams=9, minutes_old=100, version="v1"),
        _node("old-image", streams=8, minutes_old=100, image="img-1"),
        _node("unknown-load", streams=None, minutes_old=10),
        _node("busiest", streams=10, minutes_old=30),
    ]
    pol = policy(min_nodes=1, checks=[STREAMS])
    ev = run(pol, samples(streams=0.5), fleet)
    # Outdated nodes among themselves: fewest streams first (old-image has 8, old-version 9).
    assert ev.decision.victims == ("old-image", "old-version", "idle-young", "idle-old", "busy-old",
                                   "busiest")
    assert "unknown-load" not in ev.decision.victims
    assert "outdated model version v1" in reason(ev, "victim", "old-version").message


def test_booting_nodes_are_cancelled_before_idle_serving() -> None:
    """A booting node serves nobody: it is drained before serving nodes of the same version."""
    fleet = [_node("idle", streams=0, minutes_old=600),
             _node("boot", streams=None, minutes_old=1, lifecycle=Lifecycle.BOOTING)]
    pol = policy(checks=[STREAMS])
    ev = run(pol, samples(streams=1.0), fleet)  # wants 1 (ceil(1*1/7))
    assert ev.decision.victims == ("boot",)


def test_never_drains_last_serving_node() -> None:
    """With min_nodes 0 and no load, the last serving node stays."""
    pol = policy(checks=[STREAMS])
    ev = run(pol, samples(streams=0.0), nodes(1, booting=1))
    assert ev.decision.desired == 0
    assert ev.decision.victims == ("b0",)
    assert reason(ev, "victim", "shortfall").detail["kept_last_serving"] is True


def test_never_below_min() -> None:
    """Victims never take the pool below min_nodes."""
    pol = policy(min_nodes=4, checks=[STREAMS])
    ev = run(pol, samples(streams=0.0), nodes(9))
    assert len(ev.decision.victims) == 5


# --------------------------------------------------------------------------------------- reason trail
def test_reason_trail_is_complete() -> None:
    """Every check, cap and window applied leaves a reason, and one final reason ends the trail."""
    pol = policy(
        min_nodes=2, max_nodes=7, checks=[STREAMS, GPU_STEP],
        schedules=[{"name": "peak", "cron": "0 10 * * *", "duration": "1h", "min_nodes": 3}],
        behavior={"max_launching": 2, "scale_out": {"policies": [{"nodes": 5, "period": "1m"}]}},
    )
    ev = run(pol, samples(streams=30.0, gpu=None), nodes(3))
    assert kinds(ev) == ["check", "check", "rate", "schedule", "bound", "capacity", "final"]
    final = ev.decision.reasons[-1]
    assert final.detail["desired"] == ev.decision.desired == 7
    assert final.detail["launch"] == ev.decision.launch == 2
    assert "scale out 3→7" in final.message
    for r in ev.decision.reasons:
        assert r.to_dict()["message"]


def test_decide_is_pure() -> None:
    """Same inputs, same decision; the memory passed in is not mutated."""
    pol = policy(checks=[STREAMS, GPU_STEP])
    memory = EngineMemory(recommendations=[(NOW - timedelta(seconds=15), 4)], streaks={"gpu#0": 1})
    before = memory.model_dump()
    a = decide(pol, samples(streams=10.0, gpu=0.95), nodes(4), memory, NOW)
    b = decide(pol, samples(streams=10.0, gpu=0.95), nodes(4), memory, NOW)
    assert a.decision == b.decision
    assert memory.model_dump() == before


def test_memory_roundtrips_through_json_and_is_pruned() -> None:
    """Memory survives a JSON round trip (the store's format) and keeps only the longest window."""
    pol = policy(checks=[STREAMS], behavior={"scale_in": {"stabilization": "60s"},
                                             "scale_out": {"policies": [{"nodes": 1, "period": "2m"}]}})
    memory = EngineMemory()
    for i in range(40):
        at = NOW + timedelta(seconds=15 * i)
        ev = run(pol, samples(streams=10.0 if i % 2 else 3.0), nodes(6), memory, at)
        memory = EngineMemory.model_validate_json(ev.memory.model_dump_json())
    assert len(memory.recommendations) <= 5
    assert all(t > NOW + timedelta(seconds=15 * 39 - 120) for t, _ in memory.scale_events)
