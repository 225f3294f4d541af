"""Rolling replacement when the pool's model version changes: new nodes serve before old ones leave."""

from __future__ import annotations

from datetime import timedelta

import pytest
from policy_helpers import NOW, STREAMS, policy, samples

from autoscaler.domain import Lifecycle, Node
from autoscaler.policy.engine import EngineMemory, decide
from autoscaler.policy.model import PoolPolicy


def _replace_all(
    pol: PoolPolicy,
    *,
    old: int,
    streams_per_node: float,
    ticks: int = 40,
    boot_ticks: int = 2,
    drain_ticks: int = 2,
) -> list[tuple[int, int, int, int]]:
    """Simulate a fleet of ``old`` v1 nodes under a v2 policy; return (fresh serving, old serving,
    booting, draining) after each tick. Nodes boot and drain for a few ticks, as real ones do."""
    fleet: dict[str, tuple[Node, int]] = {
        f"old{i}": (
            Node(f"old{i}", Lifecycle.SERVING, "gpu", 10, "v1", NOW - timedelta(days=1), image="img-1"),
            0,
        )
        for i in range(old)
    }
    memory, history, serial = EngineMemory(), [], 0
    total_streams = streams_per_node * old
    for tick in range(ticks):
        now = NOW + timedelta(seconds=15 * tick)
        serving = [n for n, _ in fleet.values() if n.lifecycle is Lifecycle.SERVING]
        value = total_streams / max(1, len(serving))
        view = [
            Node(
                n.id,
                n.lifecycle,
                n.instance_type,
                n.capacity_streams,
                n.model_version,
                n.launched_at,
                active_streams=value if n.lifecycle is Lifecycle.SERVING else None,
                image=n.image,
            )
            for n, _ in fleet.values()
        ]
        ev = decide(pol, samples(streams=value), view, memory, now)
        memory = ev.memory
        for victim in ev.decision.victims:
            node, _ = fleet[victim]
            fleet[victim] = (
                Node(
                    node.id,
                    Lifecycle.DRAINING,
                    "gpu",
                    10,
                    node.model_version,
                    node.launched_at,
                    image=node.image,
                ),
                tick,
            )
        for _ in range(ev.decision.launch):
            serial += 1
            fleet[f"new{serial}"] = (
                Node(f"new{serial}", Lifecycle.BOOTING, "gpu", 10, "v2", now, image="img-2"),
                tick,
            )
        for node_id, (node, since) in list(fleet.items()):  # the world moves on
            if node.lifecycle is Lifecycle.BOOTING and tick - since >= boot_ticks:
                fleet[node_id] = (
                    Node(
                        node.id,
                        Lifecycle.SERVING,
                        "gpu",
                        10,
                        node.model_version,
                        node.launched_at,
                        image=node.image,
                    ),
                    tick,
                )
            elif node.lifecycle is Lifecycle.DRAINING and tick - since >= drain_ticks:
                del fleet[node_id]
        nodes = [n for n, _ in fleet.values()]
        history.append(
            (
                sum(n.lifecycle is Lifecycle.SERVING and n.model_version == "v2" for n in nodes),
                sum(n.lifecycle is Lifecycle.SERVING and n.model_version == "v1" for n in nodes),
                sum(n.lifecycle is Lifecycle.BOOTING for n in nodes),
                sum(n.lifecycle is Lifecycle.DRAINING for n in nodes),
            )
        )
    return history


@pytest.mark.parametrize(("budget", "old"), [(1, 4), (2, 6), (1, 1)])
def test_rollout_replaces_every_node_without_losing_capacity(budget: int, old: int) -> None:
    """Every outdated node is replaced; serving nodes never drop below the target; at most
    ``budget`` nodes drain at once and at most ``budget`` run above the target."""
    pol = policy(min_nodes=1, max_nodes=20, checks=[STREAMS])
    pol = pol.model_copy(
        update={
            "launch": pol.launch.model_copy(
                update={"rollout": pol.launch.rollout.model_copy(update={"max_draining": budget})}
            )
        }
    )
    history = _replace_all(pol, old=old, streams_per_node=7.0)
    for fresh, stale, booting, draining in history:
        assert fresh + stale >= old, history  # capacity never lost: new ones serve before old ones leave
        assert draining <= budget, history
        assert fresh + stale + booting <= old + budget, history
    assert history[-1] == (old, 0, 0, 0), history


def test_rollout_reason_is_in_the_trail() -> None:
    """The first tick of a rollout launches a replacement and says why."""
    pol = policy(min_nodes=1, max_nodes=20, checks=[STREAMS])
    fleet = [
        Node(f"o{i}", Lifecycle.SERVING, "gpu", 10, "v1", NOW - timedelta(days=1), active_streams=7.0)
        for i in range(3)
    ]
    ev = decide(pol, samples(streams=7.0), fleet, EngineMemory(), NOW)
    assert ev.decision.launch == 1 and ev.decision.victims == ()
    rollout = [r for r in ev.decision.reasons if r.kind == "rollout"]
    assert rollout and "outdated" in rollout[0].message
    assert "replacing outdated nodes" in ev.decision.reasons[-1].message
