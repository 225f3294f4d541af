"""How long one controller tick takes over a pool of 1,000 and of 5,000 serving nodes.

Run from the repository root::

    .venv/bin/python benchmarks/tick_speed.py                      # 1,000 and 5,000 nodes, in-memory store
    .venv/bin/python benchmarks/tick_speed.py --store sqlite       # the same on a SQLite file
    .venv/bin/python benchmarks/tick_speed.py --nodes 1000 --profile 20   # cProfile's top 20 functions

A ``Controller`` on the recording fakes (provider, balancer, metrics, probe) and the in-memory store
(``autoscaler.testing.big_pool``), pinned to one core. Two phases per pool size:

- *steady*: the load holds the pool where it is; every tick observes every node, decides, records
  the tick and rewrites the balancer's (unchanged) list;
- *moves*: the load alternates between 105 % and 95 % of the pool (beyond the check's ±2 %
  tolerance), so ticks launch, drain and terminate nodes (the world between ticks brings launched
  nodes up and ends drains).

It prints the median and p95 of the tick's wall time and its CPU time (``time.process_time``: what
the tick itself costs on a shared machine). Targets (issue 13): under 50 ms at 1,000 nodes and
under 250 ms at 5,000, in-memory adapters; the exit status is 1 when a median CPU time is over its
target (the SQLite store is reported, not judged).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import structlog

TARGET_MS = {1000: 50.0, 5000: 250.0}


def _quiet_logs() -> None:
    """Tick lines go nowhere: the benchmark measures the tick, not a terminal's speed."""
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=True,
    )


def _quantiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


def _store(kind: str, folder: Path) -> object | None:
    if kind == "memory":
        return None
    from autoscaler.store.sql import SqlStore

    return SqlStore(f"sqlite:///{folder / 'bench.db'}")


Figures = dict[str, tuple[float, float, float, float]]


def run(nodes: int, ticks: int, store_kind: str, profile: int = 0) -> Figures:
    """Time ``ticks`` steady ticks and ``ticks`` ticks with moves; return (wall median, p95, cpu median,
    p95) in ms per phase."""
    from autoscaler.protocols import Store
    from autoscaler.testing.big_pool import big_pool

    with tempfile.TemporaryDirectory() as folder:
        store = _store(store_kind, Path(folder))
        assert store is None or isinstance(store, Store)
        pool = big_pool(nodes, store=store)
        pool.tick()  # the first tick reads everything cold (memory, history): not steady state
        pool.world_step()
        figures: Figures = {}
        profiler = cProfile.Profile() if profile else None
        phases: dict[str, Callable[[int], float]] = {
            "steady": lambda _k: float(nodes),
            "moves": lambda k: nodes * (1.05 if k % 2 == 0 else 0.95),
        }
        for phase, load in phases.items():
            walls, cpus = [], []
            moves = {"launched": 0, "drained": 0, "terminated": 0}
            for k in range(ticks):
                pool.set_load(load(k))
                if profiler is not None:
                    profiler.enable()
                wall0, cpu0 = time.perf_counter(), time.process_time()
                outcome = pool.tick()
                cpus.append((time.process_time() - cpu0) * 1000)
                walls.append((time.perf_counter() - wall0) * 1000)
                if profiler is not None:
                    profiler.disable()
                pool.world_step()
                pool.forget_calls()
                moves["launched"] += len(outcome.launched)
                moves["drained"] += len(outcome.drained)
                moves["terminated"] += len(outcome.terminated)
            serving = len(pool.rig.balancer.backend_ids)
            figures[phase] = (*_quantiles(walls), *_quantiles(cpus))
            print(
                f"{nodes:>5} nodes  {store_kind:<6}  {phase:<6}  tick wall median {figures[phase][0]:7.1f} ms"
                f"  p95 {figures[phase][1]:7.1f} ms   CPU median {figures[phase][2]:7.1f} ms"
                f"  p95 {figures[phase][3]:7.1f} ms   ({ticks} ticks, {serving} serving at the end; "
                + ", ".join(f"{count} {what}" for what, count in moves.items())
                + ")",
                flush=True,
            )
        if profiler is not None:
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(profile)
        return figures


def main() -> int:
    """Run the benchmark and print its figures; exit status 1 when a median CPU time misses its target."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--nodes", type=int, action="append", help="pool size (repeatable; default 1000 and 5000)"
    )
    parser.add_argument("--ticks", type=int, default=40, help="ticks per phase")
    parser.add_argument("--store", choices=("memory", "sqlite"), default="memory")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print cProfile's top N")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})  # one core, as the target says
    _quiet_logs()
    missed = False
    for nodes in args.nodes or [1000, 5000]:
        figures = run(nodes, args.ticks, args.store, args.profile)
        target = TARGET_MS.get(nodes)
        if target is not None and args.store == "memory":
            worst = max(cpu for _w, _p, cpu, _c in figures.values())
            verdict = "met" if worst <= target else "MISSED"
            print(
                f"{nodes:>5} nodes  target {target:.0f} ms (median CPU per tick): {verdict} ({worst:.1f} ms)"
            )
            missed = missed or worst > target
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
