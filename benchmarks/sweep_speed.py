"""How fast ``autoscaler dry-run --sweep`` replays 64 policy variants of a 7-day trace on all cores.

Run from the repository root::

    .venv/bin/python benchmarks/sweep_speed.py                  # scenarios/twitter-7d.yaml, 64 variants
    .venv/bin/python benchmarks/sweep_speed.py --jobs 2

It first times one replay the way a sweep's worker does it (``dry_run(..., reuse=...)``: one policy
on an already-built demand, with the HPA-like baseline already replayed), on one core, then runs the
sweep as the command does (a subprocess, every core) and prints the wall time against the target of
issue 9: at most 64 × (one replay) ÷ cores × 1.2. The machine's load average is printed before and
after: on a shared machine both timings move with it. Exit status 1 when over the target.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core per process, as the target assumes

import argparse  # noqa: E402 - after pinning threads, before numpy loads
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

#: 4 × 2 × 2 × 2 × 2 = 64 variants of asr-aws.yaml (the base is one of them).
SWEEP = """\
name: sweep-speed
policy: {policy}
scenarios: [{scenario}]
seeds: [7]
include_base: false
parameters:
  target:
    path: scaling.checks[streams-per-node].target
    values: [6, 6.5, 7, 7.5]
  scale-in-window:
    path: scaling.behavior.scale_in.stabilization
    values: [2m, 4m]
  scale-in-cooldown:
    path: scaling.behavior.scale_in.cooldown
    values: [0s, 4m]
  queue-step:
    path: scaling.checks[queued-streams].steps[0].change
    values: [1, 2]
  scale-out-window:
    path: scaling.behavior.scale_out.stabilization
    values: [0s, 15s]
"""


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def main() -> int:
    """Time one replay and the 64-variant sweep; print the figures and whether the target is met."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", type=Path, default=REPO / "scenarios" / "twitter-7d.yaml")
    parser.add_argument("--policy", type=Path, default=REPO / "policies" / "asr-aws.yaml")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: every core)")
    args = parser.parse_args()

    from autoscaler.simulate.run import dry_run
    from autoscaler.simulate.scenario import load_scenario
    from autoscaler.simulate.sweep_run import default_jobs

    cores = args.jobs or default_jobs()
    print(f"load average before (1/5/15 min): {_load()}; cores: {cores}", flush=True)
    scenario = load_scenario(args.scenario)
    scenario = scenario.__class__(
        spec=scenario.spec.model_copy(update={"seed": 7}),
        source=scenario.source,
        policy_path=args.policy.resolve(),
        policy=scenario.policy,
    )
    started = time.perf_counter()
    first = dry_run(scenario)
    t_first = time.perf_counter() - started
    started = time.perf_counter()
    cpu_started = time.process_time()
    dry_run(scenario, policies=[("again", scenario.policy)], reuse=first)
    t_one = time.perf_counter() - started
    cpu_one = time.process_time() - cpu_started
    print(
        f"a full dry run (demand + policy + HPA-like): {t_first:.1f} s; one replay on it: {t_one:.1f} s "
        f"({cpu_one:.1f} s CPU)",
        flush=True,
    )

    with tempfile.TemporaryDirectory() as folder:
        sweep = Path(folder) / "sweep.yaml"
        sweep.write_text(SWEEP.format(policy=args.policy.resolve(), scenario=args.scenario.resolve()))
        out = Path(folder) / "out"
        command = [
            sys.executable,
            "-m",
            "autoscaler.cli",
            "dry-run",
            "--sweep",
            str(sweep),
            "--out",
            str(out),
            "--jobs",
            str(cores),
        ]
        started = time.perf_counter()
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(command, check=False, capture_output=True, text=True)
        wall = time.perf_counter() - started
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_sweep = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 2
        results = json.loads((out / "results.json").read_text())
    runs = results["runs_done"]
    target = runs * t_one / cores * 1.2
    in_sweep = statistics.median(r["run_s"] for r in results["runs"] if not r["built_demand"])
    matched = runs * in_sweep / cores * 1.2
    print(f"load average after (1/5/15 min): {_load()}")
    print(
        f"sweep: {runs} variants × 1 scenario × 1 seed on {cores} worker processes: {wall:.1f} s wall, "
        f"{cpu_sweep:.1f} s CPU"
    )
    print(
        f"target: {runs} × {t_one:.1f} s ÷ {cores} × 1.2 = {target:.1f} s -> "
        f"{'met' if wall <= target else 'NOT met'} ({wall / target:.2f} of the target)"
    )
    # The same bound with the replay timed inside the sweep (under the load the sweep saw), and in CPU
    # seconds (what the sweep costs beyond its replays, whatever the machine's other users do).
    print(
        f"with the median run inside the sweep ({in_sweep:.1f} s): {runs} × {in_sweep:.1f} s ÷ {cores} × 1.2 "
        f"= {matched:.1f} s ({wall / matched:.2f} of it)"
    )
    print(
        f"CPU: {cpu_sweep:.1f} s for the sweep against {runs} × {cpu_one:.1f} s = {runs * cpu_one:.1f} s of "
        f"replays ({cpu_sweep / (runs * cpu_one):.2f}×)"
    )
    return 0 if wall <= target else 1


if __name__ == "__main__":
    raise SystemExit(main())
