"""Pause, do-not-disrupt protection and maximum node lifetime as steps of the engine's pipeline."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from policy_helpers import NOW, STREAMS, nodes, policy, run, samples

from autoscaler.domain import DO_NOT_DISRUPT_TAG, Lifecycle, Node
from autoscaler.policy.engine import EngineMemory, decide
from autoscaler.policy.model import PoolPolicy


def _paused(pol: PoolPolicy) -> PoolPolicy:
    return pol.model_copy(update={"paused": True})


def test_protected_nodes_are_never_scale_in_victims() -> None:
    """With load for 1 node and 4 serving, only unprotected nodes are drained; the trail says why not more."""
    pol = policy(min_nodes=1, checks=[STREAMS])
    fleet = [replace(n, protected=n.id in {"s0", "s1"}, active_streams=0.5) for n in nodes(4)]
    ev = run(pol, samples(streams=0.5), fleet)
    assert set(ev.decision.victims) == {"s2", "s3"}
    shortfall = next(r for r in ev.decision.reasons if r.kind == "victim" and r.name == "shortfall")
    assert shortfall.detail["protected"] == 2 and DO_NOT_DISRUPT_TAG in shortfall.message
    assert any(r.kind == "protection" for r in ev.decision.reasons)


def test_expired_nodes_are_replaced_within_the_disruption_budget() -> None:
    """Nodes older than max_node_lifetime are replaced like outdated ones: launch first, at most
    max_draining at once; a protected old node is left alone."""
    pol = policy(min_nodes=1, checks=[STREAMS], behavior={"max_node_lifetime": "1d"})
    old = [
        Node(f"o{i}", Lifecycle.SERVING, "gpu", 10, "v2", NOW - timedelta(days=2), active_streams=7.0,
             image="img-2", protected=i == 0)
        for i in range(3)
    ]
    ev = decide(pol, samples(streams=7.0), old, EngineMemory(), NOW)
    assert ev.decision.launch == 1 and ev.decision.victims == ()  # the budget (1) allows one surge node
    expiry = next(r for r in ev.decision.reasons if r.kind == "expiry")
    assert set(expiry.detail["nodes"]) == {"o1", "o2"}  # o0 is protected
    rollout = next(r for r in ev.decision.reasons if r.kind == "rollout")
    assert rollout.detail["outdated"] == 2 and rollout.detail["budget"] == 1


def test_young_nodes_do_not_expire() -> None:
    """Nodes younger than max_node_lifetime are not replaced."""
    pol = policy(min_nodes=1, checks=[STREAMS], behavior={"max_node_lifetime": "7d"})
    ev = run(pol, samples(streams=7.0), nodes(3, streams=7.0, age=timedelta(days=1)))
    assert ev.decision.launch == 0 and not any(r.kind == "expiry" for r in ev.decision.reasons)


def test_paused_pool_records_what_it_would_do_and_does_nothing() -> None:
    """Paused: the trail says it would launch 3, the decision launches nothing and drains nothing."""
    pol = _paused(policy(min_nodes=1, checks=[STREAMS]))
    ev = run(pol, samples(streams=14.0), nodes(3, streams=14.0))
    assert ev.decision.launch == 0 and ev.decision.victims == ()
    paused = next(r for r in ev.decision.reasons if r.kind == "pause")
    assert paused.detail["would_launch"] == 3 and "acting on nothing" in paused.message
    assert ev.decision.reasons[-1].message.startswith("paused at 3 (would want 6)")
    assert ev.memory.last_scale_out is None and ev.memory.scale_events == []
    scale_in = run(pol, samples(streams=1.0), nodes(4, streams=1.0))
    assert scale_in.decision.victims == () and scale_in.decision.launch == 0
