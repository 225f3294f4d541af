"""How long one ``decide`` call takes on the shipped examples (the dry-run calls it ~80,000 times).

    .venv/bin/python benchmarks/engine_decide_speed.py [--calls N]

Prints µs per call for each example policy; exits 1 when one is above 124 µs, the whole per-tick
budget of the dry-run target (14 days at 15 s ticks, 80,640 ticks, in 10 s). The engine should stay
well below it: the fleet model and the demand share the same budget (benchmarks/dry_run_speed.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from autoscaler.domain import Lifecycle, Node, Sample
from autoscaler.policy.engine import EngineMemory, decide
from autoscaler.policy.load import load_policy

POLICIES = Path(__file__).resolve().parents[1] / "policies"
BUDGET_US = 10.0 / 80_640 * 1e6  # the dry-run target: 80,640 ticks in 10 s
NOW = datetime(2026, 3, 3, 10, 0, tzinfo=UTC)


def per_call_us(name: str, calls: int) -> float:
    """Mean µs per ``decide`` call on ``name`` with 8 serving nodes and one booting."""
    policy = load_policy(POLICIES / name)
    version, image = policy.launch.model_version, policy.launch.image.id
    fleet = [Node(f"s{i}", Lifecycle.SERVING, "gpu", 10, version, NOW - timedelta(hours=2), 7.0, image)
             for i in range(8)]
    fleet.append(Node("b0", Lifecycle.BOOTING, "gpu", 10, version, NOW - timedelta(minutes=1), None, image))
    samples = {check.name: Sample(7.2 if check.type == "target_tracking" else 0.5)
               for check in policy.scaling.checks}
    memory = EngineMemory()
    start = time.perf_counter()
    for i in range(calls):
        memory = decide(policy, samples, fleet, memory, NOW + timedelta(seconds=15 * i)).memory
    return (time.perf_counter() - start) / calls * 1e6


def main() -> int:
    """Print the figures; exit 1 over budget."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    worst = 0.0
    for name in ("asr-aws.yaml", "asr-alibaba.yaml", "asr-local.yaml", "hpa-like.yaml"):
        us = per_call_us(name, args.calls)
        worst = max(worst, us)
        print(f"{name:18s} {us:6.1f} µs per decide call ({args.calls} calls)")
    print(f"worst {worst:.1f} µs; budget {BUDGET_US:.0f} µs")
    return 0 if worst <= BUDGET_US else 1


if __name__ == "__main__":
    sys.exit(main())
