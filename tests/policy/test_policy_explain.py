"""The text rendering of a decision's reason trail."""

from __future__ import annotations

from policy_helpers import STREAMS, nodes, policy, run, samples

from autoscaler.policy.explain import render_reasons


def test_render_shows_every_check_query_cap_and_final() -> None:
    """The rendering lists each check with query and value, each cap, victims and the final line."""
    pol = policy(min_nodes=1, max_nodes=5,
                 checks=[STREAMS, {"name": "gpu", "type": "step", "query": "max(gpu)",
                                   "steps": [{"above": 0.9, "change": 2}]}],
                 behavior={"max_launching": 1})
    ev = run(pol, samples(streams=20.0, gpu=None), nodes(2))
    text = render_reasons(ev.decision)
    lines = text.splitlines()
    assert lines[0].startswith("pool asr at 2025-03-03T10:00:00+00:00: ready 2, booting 0, draining 0")
    assert "→ desired 5 (launch 1)" in lines[0]
    assert "query: avg(asr_active_streams)" in text
    assert "gpu" in text and "no data" in text
    assert "[bound] max_nodes: lowered from 6 to the maximum of 5" in text
    assert "[capacity] max_launching:" in text
    assert lines[-1] == f"final: {ev.decision.reasons[-1].message}"


def test_render_lists_victims() -> None:
    """A scale-in rendering names each victim and why it was chosen."""
    ev = run(policy(checks=[STREAMS]), samples(streams=1.0), nodes(3, streams=2.0))
    text = render_reasons(ev.decision)
    assert "victims:" in text
    assert "[victim] s0: drain s0: 2 active streams" in text
