"""How fast a dry run replays 14 days of per-second demand at 15-second ticks (80,640 ticks).

Run from the repository root::

    .venv/bin/python benchmarks/dry_run_speed.py              # the twitter trace, asr-aws policy
    .venv/bin/python benchmarks/dry_run_speed.py --full       # also the HPA-like baseline and the report

It prints the time of each stage (read and scale the trace into per-second streams, the tick loop
through the decision engine, the oracle), wall and CPU (``time.process_time``), and the ticks per
second. The target is at most 10 s for demand + replay + oracle on one core; the exit status judges
the CPU time, which on a machine shared with other work is what one core spent, where the wall
time also counts waiting for a core. Numerical libraries are pinned to one thread.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core, as the target says

import argparse  # noqa: E402 - after pinning threads, before numpy loads
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TRACE = REPO.parent / "shared" / "traces" / "twitter-2021-08-per-second.tbz2"

SCENARIO = """\
policy: {policy}
demand: {{format: twitter, path: {trace}, start: 0s, duration: {days}d, peak_nodes: 18}}
workload: {{audio_seconds: {{distribution: lognormal, median: 60, p95: 300}}, real_time_factor: 1.0}}
fleet: {{streams_per_node: 10, boot_seconds: 180, price_per_hour: 1.006}}
pool: {{min_nodes: 5, max_nodes: 20}}
tick_seconds: 15
seed: 7
"""


def main() -> int:
    """Run the benchmark and print its figures; exit status 1 when its CPU time is over the 10 s target."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--trace", type=Path, default=TRACE, help="twitter trace (bzip2 tar with workload.txt)"
    )
    parser.add_argument("--policy", type=Path, default=REPO / "policies" / "asr-aws.yaml")
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument(
        "--full", action="store_true", help="also replay the HPA-like baseline and write the report"
    )
    args = parser.parse_args()

    from autoscaler.simulate.demand import build_demand
    from autoscaler.simulate.fleet import fit_policy, replay, resolve_fleet
    from autoscaler.simulate.oracle import oracle
    from autoscaler.simulate.report import write_outputs
    from autoscaler.simulate.run import dry_run
    from autoscaler.simulate.scenario import load_scenario
    from autoscaler.simulate.workload import ServiceLaw

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.yaml"
        path.write_text(
            SCENARIO.format(policy=args.policy.resolve(), trace=args.trace.resolve(), days=args.days)
        )
        started = time.perf_counter()
        cpu_started = time.process_time()
        scenario = load_scenario(path)
        fleet = resolve_fleet(scenario)
        demand = build_demand(scenario, fleet.streams_per_node)
        t_demand, c_demand = time.perf_counter(), time.process_time()
        policy = fit_policy(scenario.policy, fleet, min_nodes=None, max_nodes=None)
        result = replay("bench", policy, demand, fleet, ServiceLaw(scenario.spec.workload), tick_s=15, seed=7)
        t_replay, c_replay = time.perf_counter(), time.process_time()
        best = oracle(demand.required_nodes(fleet.streams_per_node, policy.scaling.min_nodes), fleet.boot_s)
        t_oracle = time.perf_counter()
        cpu = time.process_time() - cpu_started
        ticks = len(result.tick_times)
        total = t_oracle - started
        print(
            f"window: {demand.duration_s:,} s of per-second demand ({args.days} days), "
            f"{demand.arrivals:,} arrivals after scaling by {demand.scale:.5f}"
        )
        print(f"ticks: {ticks:,} at 15 s")
        print(
            f"demand (read, scale, streams per second): {t_demand - started:6.2f} s wall, "
            f"{c_demand - cpu_started:6.2f} s CPU"
        )
        print(
            f"replay (engine + fleet, {ticks:,} ticks):    {t_replay - t_demand:6.2f} s wall, "
            f"{c_replay - c_demand:6.2f} s CPU ({(c_replay - c_demand) / ticks * 1e6:.0f} µs CPU per tick)"
        )
        print(
            f"oracle:                                   {t_oracle - t_replay:6.2f} s "
            f"({best.node_seconds:,} node-seconds)"
        )
        print(
            f"total:                                    {total:6.2f} s wall, {cpu:.2f} s CPU "
            f"({ticks / total:,.0f} ticks/s overall)"
        )
        if args.full:
            full_started = time.perf_counter()
            done = dry_run(scenario)
            write_outputs(done, Path(folder) / "out")
            print(
                "full dry run (policy + HPA-like + oracle + report): "
                f"{time.perf_counter() - full_started:6.2f} s"
            )
        return 0 if cpu <= 10.0 else 1


if __name__ == "__main__":
    sys.exit(main())
