"""The engine as an ordered pipeline: each step alone, the look-ahead, and HPA's own semantics."""

from __future__ import annotations

from datetime import timedelta

from policy_helpers import NOW, kinds, nodes, policy, reason, run, samples

from autoscaler.domain import Sample
from autoscaler.policy import engine
from autoscaler.policy.engine import STEPS, Draft, EngineMemory, rate_allowance, theil_sen_slope
from autoscaler.policy.model import DirectionBehavior

STREAMS = {"name": "streams", "type": "target_tracking", "query": "avg(asr_active_streams)", "target": 7}
POOL = {"name": "demand", "type": "queueing", "query": "sum(asr_active_streams)",
        "service_level": {"wait_probability": 0.05}}
TICK = timedelta(seconds=15)


def _draft(pol_kwargs: dict[str, object], values: dict[str, float | None], serving: int,
           memory: EngineMemory | None = None) -> Draft:
    return Draft.start(policy(**pol_kwargs), samples(**values), nodes(serving), memory or EngineMemory(),
                       NOW, None)


def test_steps_run_in_the_documented_order() -> None:
    """The pipeline is one tuple, in the order the module docstring lists."""
    assert [s.__name__ for s in STEPS] == [
        "vote", "combine", "missing_data_fallback", "look_ahead", "forecast_floor",
        "stabilize", "cooldown", "rate_limit", "bound", "protect", "plan_moves", "pause",
    ]
    for step in STEPS:
        assert step.__doc__, step.__name__


def test_vote_and_combine_alone() -> None:
    """vote records one reason per check; combine takes the largest vote."""
    d = _draft({"checks": [STREAMS]}, {"streams": 14.0}, 4)
    engine.vote(d)
    assert d.votes == [(8, "streams")] and [r.kind for r in d.reasons] == ["check"]
    engine.combine(d)
    assert (d.combined, d.winner) == (8, "streams")


def test_combine_blocks_scale_in_when_a_check_is_blind() -> None:
    """combine alone: a missing check keeps the count at current and says so."""
    d = _draft({"checks": [STREAMS, {**STREAMS, "name": "other"}]}, {"streams": 1.0, "other": None}, 6)
    engine.vote(d)
    engine.combine(d)
    assert d.combined == 6
    assert d.reasons[-1].kind == "fallback"


def test_bound_alone_clamps_to_min_and_max() -> None:
    """bound alone: min_nodes raises, max_nodes lowers, each with a reason."""
    d = _draft({"min_nodes": 3, "max_nodes": 10, "checks": [STREAMS]}, {"streams": 1.0}, 4)
    d.target = 1
    engine.bound(d)
    assert d.target == 3 and d.reasons[-1].name == "min_nodes"
    d.target = 40
    engine.bound(d)
    assert d.target == 10 and d.reasons[-1].name == "max_nodes"


def test_cooldown_alone_holds_a_move_in_the_same_direction() -> None:
    """cooldown alone: a scale-in this soon after the last one waits."""
    pol = {"checks": [STREAMS], "behavior": {"scale_in": {"stabilization": 0, "cooldown": "4m"}}}
    d = _draft(pol, {"streams": 1.0}, 6, EngineMemory(last_scale_in=NOW - timedelta(minutes=1)))
    d.target = 2
    engine.cooldown(d)
    assert d.target == 6 and d.reasons[-1].kind == "cooldown"


# ------------------------------------------------------------------------------------------ HPA semantics
def test_fresh_memory_never_scales_in_on_its_first_tick() -> None:
    """Like HPA, a controller that just started seeds its scale-in window with the current count."""
    pol = policy(checks=[STREAMS], behavior={"scale_in": {"stabilization": "300s"}})
    first = run(pol, samples(streams=1.0), nodes(8))
    assert first.decision.desired == 8 and not first.decision.victims
    assert "seeded with the count at start" in reason(first, "window").message
    memory, now = first.memory, NOW
    for _ in range(19):  # still inside the 300 s window
        now += TICK
        ev = run(pol, samples(streams=1.0), nodes(8), memory, now)
        memory = ev.memory
        assert not ev.decision.victims
    now += TICK * 2
    later = run(pol, samples(streams=1.0), nodes(8), memory, now)
    assert later.decision.desired < 8


def test_fresh_memory_still_scales_out_at_once() -> None:
    """The seed limits only scale-in: a started controller under load scales out on its first tick."""
    pol = policy(checks=[STREAMS], behavior={"scale_in": {"stabilization": "300s"}})
    assert run(pol, samples(streams=14.0), nodes(4)).decision.launch == 4


def test_percent_scale_in_rounds_as_hpa() -> None:
    """HPA: a 50 % scale-in of 5 may go down to floor(5 × 0.5) = 2, removing 3 (not 2)."""
    behavior = DirectionBehavior.model_validate({"policies": [{"percent": 50, "period": "60s"}]})
    allowed, _ = rate_allowance(behavior, [], current=5, outward=False, now=NOW) or (None, "")
    assert allowed == 3


def test_percent_limits_count_from_the_period_start() -> None:
    """HPA takes the limit from the count at the period's start: 100 % of 4 allows 8 in total."""
    behavior = DirectionBehavior.model_validate({"policies": [{"percent": 100, "period": "60s"}]})
    events = [(NOW - timedelta(seconds=30), 2)]
    allowed, text = rate_allowance(behavior, events, current=6, outward=True, now=NOW) or (None, "")
    assert allowed == 2 and "from 4" in text


def test_direction_tolerances() -> None:
    """Kubernetes 1.33: a scale-out tolerance of 0 reacts to 1 % while scale-in keeps 10 %."""
    pol = policy(checks=[STREAMS], behavior={"scale_out": {"tolerance": 0.0},
                                             "scale_in": {"stabilization": 0, "tolerance": 0.3}})
    assert run(pol, samples(streams=7.3), nodes(10)).decision.desired == 11
    assert run(pol, samples(streams=5.5), nodes(10)).decision.desired == 10  # 21 % below: within 30 %


# ------------------------------------------------------------------------------------------- look-ahead
def _trend(pol_kwargs: dict[str, object], values: list[float], serving: int) -> list[object]:
    pol = policy(**pol_kwargs)
    memory = EngineMemory()
    out = []
    for i, v in enumerate(values):
        ev = run(pol, {"demand": Sample(v)}, nodes(serving), memory, NOW + TICK * i)
        memory = ev.memory
        out.append(ev)
    return out


LOOK = {"checks": [POOL], "look_ahead": {"check": "demand", "horizon": "180s", "max_nodes_per_tick": 2}}


def test_look_ahead_sizes_for_the_demand_one_boot_ahead() -> None:
    """A steady rise of 3 streams a tick is projected 180 s ahead and adds nodes, capped per tick."""
    evs = _trend(LOOK, [20.0, 23.0, 26.0, 29.0], 4)
    last = evs[-1]
    r = reason(last, "look-ahead")
    assert r.detail["projected"] > 29.0 + 30
    assert r.detail["after"] - r.detail["before"] <= 2
    assert last.decision.desired == r.detail["after"]


def test_look_ahead_ignores_a_single_spike() -> None:
    """Theil-Sen: one spiking tick among flat ones gives no trend and adds nothing."""
    evs = _trend(LOOK, [20.0, 20.0, 20.0, 60.0, 20.0, 20.0], 5)
    assert all("look-ahead" not in kinds(ev) for ev in evs[-2:])
    assert theil_sen_slope([(0, 1.0), (1, 1.0), (2, 50.0), (3, 1.0), (4, 1.0)]) == 0.0


def test_look_ahead_never_lowers_the_count() -> None:
    """A falling trend is not projected: scale-in is left to the checks and the windows."""
    evs = _trend(LOOK, [60.0, 50.0, 40.0, 30.0], 8)
    assert all("look-ahead" not in kinds(ev) for ev in evs)
