"""The HPA-like baseline tracks the compared policy's own target (a like-for-like comparison)."""

from __future__ import annotations

from typing import Any

from sim_helpers import POLICIES, TRACKING_AWS

from autoscaler.policy.load import load_policy
from autoscaler.policy.model import PoolPolicy, TargetTrackingCheck
from autoscaler.simulate.run import hpa_like_baseline


def _with_checks(policy: PoolPolicy, checks: list[dict[str, Any]]) -> PoolPolicy:
    data = policy.model_dump()
    data["scaling"]["checks"] = checks
    return PoolPolicy.model_validate(data)


def _targets(policy: PoolPolicy) -> list[float]:
    return [c.target for c in policy.scaling.checks if isinstance(c, TargetTrackingCheck)]


def test_hpa_like_takes_the_compared_policys_target() -> None:
    """The baseline's streams_per_node target becomes the compared policy's; HPA's behaviour stays."""
    hpa = load_policy(POLICIES / "hpa-like.yaml")
    aws = load_policy(TRACKING_AWS)
    changed = _with_checks(
        aws,
        [
            c.model_dump() | {"target": 8.5} if c.name == "streams-per-node" else c.model_dump()
            for c in aws.scaling.checks
        ],
    )
    fair = hpa_like_baseline(hpa, changed)
    assert _targets(fair) == [8.5]
    assert fair.scaling.checks[0].tolerance == 0.1  # type: ignore[union-attr]
    assert fair.scaling.behavior == hpa.scaling.behavior


def test_hpa_like_keeps_its_target_without_a_matching_check() -> None:
    """A compared policy tracking another signal (or per pool) leaves the baseline's own target."""
    hpa = load_policy(POLICIES / "hpa-like.yaml")
    other = _with_checks(
        hpa,
        [
            {
                "name": "pool-streams",
                "type": "target_tracking",
                "signal": "active_streams",
                "query": "q",
                "target": 50,
                "per": "pool",
            }
        ],
    )
    assert _targets(hpa_like_baseline(hpa, other)) == _targets(hpa)
