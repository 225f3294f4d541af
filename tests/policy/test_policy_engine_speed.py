"""The engine is fast enough for the dry-run's replay loop (tens of thousands of calls)."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from policy_helpers import NOW, nodes

from autoscaler.domain import Sample
from autoscaler.policy.engine import EngineMemory, decide
from autoscaler.policy.load import load_policy

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def test_decide_speed_on_example_policy() -> None:
    """decide on the Alibaba example (4 checks, 3 schedules) stays far below 1 ms per call.

    The dry-run target is ~40 µs; this bound is loose (shared CI cores) and catches only gross
    regressions such as building croniter objects or validating models per call.
    """
    pol = load_policy(POLICIES / "asr-alibaba.yaml")
    fleet = nodes(8, booting=1)
    values = {"streams-per-node": Sample(7.2), "gpu-memory": Sample(0.7), "queued-streams": Sample(0.0),
              "p95-latency": Sample(120.0)}
    memory = EngineMemory()
    calls = 5000
    start = time.perf_counter()
    for i in range(calls):
        memory = decide(pol, values, fleet, memory, NOW + timedelta(seconds=15 * i)).memory
    per_call = (time.perf_counter() - start) / calls
    assert per_call < 1e-3, f"{per_call * 1e6:.0f} µs per call"
