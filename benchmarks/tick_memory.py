"""Whether the controller's resident memory grows over 10,000 ticks.

Run from the repository root::

    .venv/bin/python benchmarks/tick_memory.py                   # in-memory store, 200 nodes, 10,000 ticks
    .venv/bin/python benchmarks/tick_memory.py --store sqlite    # the same on a SQLite file
    .venv/bin/python benchmarks/tick_memory.py --nodes 1000 --ticks 20000

A ``Controller`` on the recording fakes (``autoscaler.testing.big_pool``, with a warm pool) ticks
every 15 simulated seconds while the load moves the pool up and down (a daily-like wave plus
noise), so nodes launch, join, drain and terminate all along: thousands of instance ids come and
go. Retention runs after each tick as in ``autoscaler run`` (the policy keeps 1 h of tick records),
and the fakes' call logs are emptied (they record every call by design). The controller's
Prometheus metrics are collected every tick, as a scrape would.

It prints the resident set size (psutil) every 1,000 ticks and, with ``--trace``, tracemalloc's top
growth between the first sample and the last. Growth is judged from tick 2,000 on (the store's
1 h of records fills up during the first 240 ticks): exit status 1 when RSS grew by more than 10 %
between the 2,000th tick and the last.
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import sys
import tempfile
import tracemalloc
from pathlib import Path

import psutil
import structlog
from prometheus_client import generate_latest

SAMPLE_EVERY = 1000
JUDGED_FROM = 2000
ALLOWED_GROWTH = 0.10


def main() -> int:
    """Run the ticks, print RSS per thousand; exit status 1 when RSS grew past the allowance."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=200, help="pool size at the middle of the wave")
    parser.add_argument("--ticks", type=int, default=10_000)
    parser.add_argument("--store", choices=("memory", "sqlite"), default="memory")
    parser.add_argument("--trace", action="store_true", help="tracemalloc's top growth (slower)")
    args = parser.parse_args()
    structlog.configure(
        processors=[structlog.processors.JSONRenderer()],
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=True,
    )

    from autoscaler.store.sql import SqlStore
    from autoscaler.testing.big_pool import big_pool

    process = psutil.Process()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as folder:
        store = SqlStore(f"sqlite:///{Path(folder) / 'bench.db'}") if args.store == "sqlite" else None
        pool = big_pool(args.nodes, store=store, max_nodes=3 * args.nodes, warm=True)
        registry = pool.rig.controller.telemetry.registry
        if args.trace:
            tracemalloc.start(10)
        first_snapshot: tracemalloc.Snapshot | None = None
        samples: list[tuple[int, float]] = []
        launched = terminated = 0
        for k in range(1, args.ticks + 1):
            # A wave between 50 % and 150 % of the pool with a period of 240 ticks (an hour), plus noise.
            wave = 1.0 + 0.5 * math.sin(2 * math.pi * k / 240) + rng.uniform(-0.05, 0.05)
            pool.set_load(args.nodes * wave)
            outcome = pool.tick()
            launched += len(outcome.launched)
            terminated += len(outcome.terminated)
            generate_latest(registry)  # a scrape of the controller's own metrics
            pool.world_step()
            pool.forget_calls()
            if k % SAMPLE_EVERY == 0:
                gc.collect()
                rss = process.memory_info().rss / 2**20
                samples.append((k, rss))
                instances = len(pool.rig.provider.instances)
                print(
                    f"tick {k:>6}: RSS {rss:7.1f} MiB  ({launched} launched, {terminated} terminated so far, "
                    f"{instances} instance ids ever, {len(pool.rig.balancer.backend_ids)} serving)",
                    flush=True,
                )
                if args.trace and k == JUDGED_FROM:
                    first_snapshot = tracemalloc.take_snapshot()
        if args.trace and first_snapshot is not None:
            print("tracemalloc: top growth since tick", JUDGED_FROM)
            for stat in tracemalloc.take_snapshot().compare_to(first_snapshot, "lineno")[:15]:
                print("  ", stat)
        if store is not None:
            store.close()
    judged = [rss for k, rss in samples if k >= JUDGED_FROM]
    if len(judged) < 2:
        print("too few ticks to judge growth")
        return 0
    growth = (judged[-1] - judged[0]) / judged[0]
    print(
        f"RSS from tick {JUDGED_FROM:,} to {samples[-1][0]:,}: {judged[0]:.1f} → {judged[-1]:.1f} MiB "
        f"({growth:+.1%}; allowed +{ALLOWED_GROWTH:.0%})"
    )
    return 1 if growth > ALLOWED_GROWTH else 0


if __name__ == "__main__":
    sys.exit(main())
