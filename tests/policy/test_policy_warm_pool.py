"""The engine's warm-pool step: starts before cold launches, preparation to size, outdated discarded."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from autoscaler.domain import Lifecycle, Node
from autoscaler.policy.engine import STEPS, warm_pool
from autoscaler.policy.model import PoolPolicy
from tests.policy.policy_helpers import BASE, NOW, STREAMS, _merge, nodes, reason, run, samples


def warm_policy(warm: dict[str, Any] | None = None, **scaling: Any) -> PoolPolicy:
    """BASE with a streams check, ``scaling`` merged in and a warm pool (size 2 unless given)."""
    data = _merge(BASE, {"scaling": {"checks": [STREAMS], **scaling}})
    data["warm_pool"] = {"size": 2, **(warm or {})}
    return PoolPolicy.model_validate(data)


def warm(count: int, *, lifecycle: Lifecycle = Lifecycle.STOPPED, version: str = "v2", image: str = "img-2",
         prefix: str = "w") -> list[Node]:
    """``count`` warm-pool nodes, the oldest first."""
    return [Node(f"{prefix}{i}", lifecycle, "gpu", 10, version, NOW - timedelta(hours=3, minutes=-i),
                 image=image) for i in range(count)]


def test_warm_pool_is_a_step_after_plan_moves() -> None:
    """The warm pool step follows plan_moves (it turns the planned launches into starts) and comes
    before pause (a paused pool drops the warm moves too)."""
    names = [s.__name__ for s in STEPS]
    assert STEPS[names.index("plan_moves") + 1] is warm_pool
    assert names.index("pause") == names.index("warm_pool") + 1


def test_a_paused_pool_starts_prepares_and_discards_nothing() -> None:
    """paused: the warm moves are recorded in the trail and dropped, like launches."""
    data = warm_policy().model_dump()
    data["paused"] = True
    ev = run(PoolPolicy.model_validate(data), samples(streams=14.0),
             nodes(serving=4, streams=14.0) + warm(3) + warm(1, version="v1", prefix="old"))
    d = ev.decision
    assert d.start == () and d.prepare == 0 and d.discard == () and d.launch == 0
    assert reason(ev, "pause").detail["would_start"] == ["w0", "w1", "w2"]


def test_scale_out_starts_warm_instances_first_then_launches_cold() -> None:
    """Needing 4 more nodes with 3 warm: start all 3 (oldest first), launch 1 cold, prepare 2 to refill."""
    ev = run(warm_policy(), samples(streams=14.0), nodes(serving=4, streams=14.0) + warm(3))
    d = ev.decision
    assert d.desired == 8
    assert d.start == ("w0", "w1", "w2")
    assert d.launch == 1
    assert d.prepare == 2 and d.warm_target == 2
    assert "start 3 warm, launch 1" in reason(ev, "final").message
    assert reason(ev, "warm", "start").detail["cold"] == 1


def test_starts_count_as_capacity_on_the_way_next_tick() -> None:
    """A STARTING node counts as booting: the next tick does not start or launch again for it."""
    starting = warm(2, lifecycle=Lifecycle.STARTING, prefix="st")
    ev = run(warm_policy(), samples(streams=7.0), nodes(serving=4, streams=7.0) + starting + warm(2))
    assert ev.decision.booting == 2
    assert ev.decision.launch == 0 and ev.decision.start == ()


def test_outdated_warm_instances_are_discarded_never_started() -> None:
    """A warm instance of another model version or image is terminated and replaced, not started."""
    old = warm(1, version="v1", prefix="old") + warm(1, image="img-1", prefix="img")
    ev = run(warm_policy(), samples(streams=14.0), nodes(serving=2, streams=14.0) + old + warm(1))
    d = ev.decision
    assert set(d.discard) == {"old0", "img0"}
    assert d.start == ("w0",)
    assert d.launch == 1
    assert d.prepare == 2  # the pool is empty after the start: refill both
    assert "never started" in reason(ev, "warm", "old0").message


def test_pool_below_size_prepares_counting_preparing_and_reusable_draining() -> None:
    """Holding still: size 3 with 1 stopped, 1 preparing and 1 draining to reuse → nothing to prepare."""
    fleet = nodes(serving=3, draining=1, streams=7.0) + warm(1) + warm(1, lifecycle=Lifecycle.PREPARING,
                                                                     prefix="p")
    ev = run(warm_policy({"size": 3}), samples(streams=7.0), fleet)
    assert ev.decision.prepare == 0 and ev.decision.launch == 0
    no_reuse = run(warm_policy({"size": 3, "reuse_on_scale_in": False}), samples(streams=7.0), fleet)
    assert no_reuse.decision.prepare == 1


def test_warm_pool_beyond_size_discards_the_newest() -> None:
    """Four stopped with a size of 2: the two newest are discarded."""
    ev = run(warm_policy(), samples(streams=7.0), nodes(serving=3, streams=7.0) + warm(4))
    assert ev.decision.discard == ("w3", "w2")
    assert ev.decision.prepare == 0


def test_max_prepared_shrinks_the_pool_as_the_fleet_grows() -> None:
    """max_prepared 6 with 5 nodes wanted: the warm pool target is 1, not 2."""
    ev = run(warm_policy({"max_prepared": 6}), samples(streams=7.0), nodes(serving=5, streams=7.0))
    assert ev.decision.warm_target == 1 and ev.decision.prepare == 1


def test_preparation_is_capped_by_max_launching() -> None:
    """Preparing shares max_launching with cold launches and boots."""
    ev = run(warm_policy({"size": 4}, behavior={"max_launching": 2}), samples(streams=7.0),
             nodes(serving=3, booting=1, streams=7.0))
    assert ev.decision.prepare == 1
    assert reason(ev, "capacity", "max_launching-warm").detail["wanted"] == 4


def test_warm_nodes_are_not_capacity() -> None:
    """Stopped and preparing nodes count neither as ready nor as booting."""
    fleet = nodes(serving=2, streams=7.0) + warm(2) + warm(2, lifecycle=Lifecycle.PREPARING, prefix="p")
    d = run(warm_policy({"size": 4}), samples(streams=7.0), fleet).decision
    assert (d.ready, d.booting, d.current) == (2, 0, 2)
    assert d.warm == 2


def test_without_a_warm_pool_leftover_warm_instances_are_discarded() -> None:
    """A policy without warm_pool discards stopped instances a previous policy left, and starts none."""
    pol = PoolPolicy.model_validate(_merge(BASE, {"scaling": {"checks": [STREAMS]}}))
    d = run(pol, samples(streams=14.0), nodes(serving=2, streams=14.0) + warm(2)).decision
    assert d.start == () and d.launch == 2
    assert set(d.discard) == {"w0", "w1"}


def test_explain_renders_the_warm_pool_moves() -> None:
    """`autoscaler explain` shows the warm pool's size, the starts, preparation and its reasons."""
    from autoscaler.policy.explain import render_reasons

    ev = run(warm_policy(), samples(streams=14.0), nodes(serving=4, streams=14.0) + warm(3))
    text = render_reasons(ev.decision)
    assert "warm pool 3 of 2" in text.splitlines()[0]
    assert "start warm w0, w1, w2" in text and "prepare 2" in text
    assert "warm pool:" in text and "[warm] start:" in text
