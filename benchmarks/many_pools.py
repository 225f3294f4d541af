"""50 pools in one controller process at a 15 s tick, on one core: does it keep up?

    .venv/bin/python benchmarks/many_pools.py [--pools 50] [--rounds 20] [--compress 10] [--core 0]

The real ``PoolService`` and ``PoolSet`` (one APScheduler job and thread per pool, the directory
re-scanned every 2 s of schedule) run 50 policy files written to a temporary directory, each pool
on the in-memory adapters (``autoscaler.testing.pool_rig``: fake provider, balancer, metrics and
probe, its own ``MemoryStore``; ``--sqlite`` puts every pool in one SQLite file instead). Pools hold
2 to 10 nodes at their minimum and the demand of each swings on its own sine, so every round has
pools scaling out and in. The process is pinned to one core (``os.sched_setaffinity``).

Ticks are compressed: with ``--compress C`` every pool ticks every 15/C s of wall time, and the
controllers' clock runs C times faster than the wall clock (boot timeouts, stabilisation windows and
cool-downs see 15 s per tick). The work of a tick does not depend on the clock, so the CPU one round
costs is what 15 s of schedule costs at real time; ``--compress 1`` runs in real time.

Prints per round (one tick period): ticks run, the wall time they took (sum, and the longest
tick), and CPU seconds of the process; then CPU seconds per 15 s of schedule (mean and worst) as
a share of one core, ticks missed (skipped by the scheduler: a pool's previous tick still
running, or past the misfire grace) and late (started more than 10 % of the tick after it was
due). Exit status 1 when it does not keep up: a tick missed, or the worst round needing more CPU
than 15 s of schedule allows.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import mean

import structlog
from apscheduler.events import (
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobEvent,
    JobExecutionEvent,
    JobSubmissionEvent,
)
from prometheus_client import CollectorRegistry

from autoscaler.pools import PoolSet
from autoscaler.service import PoolService
from autoscaler.store import SqlStore
from autoscaler.telemetry import ControllerMetrics
from autoscaler.testing.controller_rig import STREAMS_QUERY
from autoscaler.testing.pool_rig import FakePools, pool_policy

TICK_S = 15.0


class ScaledClock:
    """Wall time running ``factor`` times faster from the moment it is made."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self._wall0 = time.time()
        self._at0 = datetime.now(UTC)

    def now(self) -> datetime:
        """The compressed schedule's current instant."""
        return self._at0 + timedelta(seconds=(time.time() - self._wall0) * self.factor)


class Recorder:
    """Scheduler events: when each tick was due, started (submitted to its pool's thread) and
    finished; missed and skipped ticks."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.late_s: list[float] = []
        self._started: dict[tuple[str, float], float] = {}
        #: Per job: (due, started, finished) of each tick.
        self.ticks: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
        self.missed = 0
        self.skipped = 0

    def __call__(self, event: JobEvent) -> None:
        """An APScheduler listener."""
        if not event.job_id.startswith("tick:"):
            return
        now = time.time()
        with self.lock:
            if event.code == EVENT_JOB_MAX_INSTANCES:  # a JobSubmissionEvent too: test it first
                self.skipped += 1
            elif isinstance(event, JobSubmissionEvent):
                for due in event.scheduled_run_times:
                    self.late_s.append(now - due.timestamp())
                    self._started[(event.job_id, due.timestamp())] = now
            elif isinstance(event, JobExecutionEvent):
                if event.code == EVENT_JOB_MISSED:
                    self.missed += 1
                    return
                due = event.scheduled_run_time.timestamp()
                started = self._started.pop((event.job_id, due), due)
                self.ticks[event.job_id].append((due, started, now))


def main() -> int:
    """Run, print the figures; exit 1 when the controller does not keep up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20, help="Tick periods to run (after the first).")
    parser.add_argument("--compress", type=float, default=10.0, help="Schedule seconds per wall second.")
    parser.add_argument("--core", type=int, default=0, help="The one core to pin the process to.")
    parser.add_argument("--sqlite", action="store_true", help="One SQLite store for all pools.")
    args = parser.parse_args()

    os.sched_setaffinity(0, {args.core})
    # Ticks log at info; 50 pools' lines would measure the terminal, not the controller.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # missed ticks are counted below
    interval = TICK_S / args.compress
    with tempfile.TemporaryDirectory(prefix="many-pools-") as tmp:
        directory = Path(tmp) / "policies"
        directory.mkdir()
        for i in range(args.pools):
            name = f"pool-{i:03d}"
            (directory / f"{name}.yaml").write_text(pool_policy(name, min_nodes=2 + i % 9))
        store = SqlStore(f"sqlite:///{tmp}/store.db") if args.sqlite else None
        clock = ScaledClock(args.compress)
        fakes = FakePools(ControllerMetrics(CollectorRegistry()), clock=clock, store=store)
        pools = PoolSet([directory], [], fakes.build, telemetry=fakes.telemetry)
        # File polling is wall-clock work (it does not scale with the schedule): every 2 s as in `run`.
        service = PoolService(pools, blocking=False, on_tick=fakes.settle_after(), interval_s=interval,
                              rescan_s=2.0)
        recorder = Recorder()
        service.scheduler.add_listener(
            recorder, EVENT_JOB_SUBMITTED | EVENT_JOB_EXECUTED | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES
        )
        load_started = time.process_time()
        first = pools.scan()
        startup_cpu = time.process_time() - load_started
        started = time.time()
        service.start(first)
        cpu_marks = [time.process_time()]
        for k in range(1, args.rounds + 2):
            # Each pool's demand swings on its own phase: some scale out while others scale in.
            for i in range(args.pools):
                load = 7.0 + 5.0 * math.sin(2 * math.pi * (k / 8 + i / args.pools))
                fakes.fleet(f"pool-{i:03d}").metrics.set(STREAMS_QUERY, load)
            time.sleep(max(0.0, started + k * interval - time.time()))
            cpu_marks.append(time.process_time())
        service.stop()
        if store is not None:
            store.close()
    print(f"loading {args.pools} policy files and building their pools: {startup_cpu:.2f} CPU s")
    return report(args, interval, recorder, cpu_marks, fakes)


def report(
    args: argparse.Namespace, interval: float, recorder: Recorder, cpu_marks: list[float], fakes: FakePools
) -> int:
    """Print the figures; 0 when every tick ran and the worst round fits in one core's 15 s."""
    rounds: dict[int, list[float]] = defaultdict(list)  # round → wall seconds of each tick
    for ticks in recorder.ticks.values():
        first_due = min(due for due, _start, _end in ticks)
        for due, start, end in ticks:
            rounds[round((due - first_due) / interval)].append(end - start)
    cpu = [b - a for a, b in itertools.pairwise(cpu_marks)]
    print(f"{args.pools} pools, tick {TICK_S:.0f} s compressed {args.compress:g}x (every {interval:.2f} s of "
          f"wall time), one core (affinity {sorted(os.sched_getaffinity(0))}), "
          f"{'one SQLite store' if args.sqlite else 'in-memory stores'}")
    print("round  ticks  wall s in ticks (sum)  longest tick ms  process CPU s")
    for k in sorted(rounds)[: args.rounds + 1]:
        walls = rounds[k]
        used = f"{cpu[k]:13.3f}" if k < len(cpu) else "            -"
        print(f"{k:5d}  {len(walls):5d}  {sum(walls):21.3f}  {max(walls) * 1000:15.1f}  {used}")
    steady = cpu[1: args.rounds + 1] or cpu
    ticks = sum(len(t) for t in recorder.ticks.values())
    late = sum(1 for s in recorder.late_s if s > 0.1 * TICK_S)
    late_here = sum(1 for s in recorder.late_s if s > 0.1 * interval)
    nodes = sum(len(f.balancer.current()) for f in fakes.fleets.values())
    delays = sorted(recorder.late_s) or [0.0]
    p50, p99 = delays[len(delays) // 2], delays[int(len(delays) * 0.99)]
    print(f"CPU s per {TICK_S:.0f} s of schedule: mean {mean(steady):.3f}, worst {max(steady):.3f} "
          f"(round 0: {cpu[0]:.3f}) = {max(steady) / TICK_S:.1%} of one core at real time, "
          f"{max(steady) / interval:.0%} at this compression")
    print(f"ticks: {ticks} run, {recorder.missed + recorder.skipped} missed ({recorder.missed} past the "
          f"misfire grace, {recorder.skipped} while the previous still ran); start delay after due: "
          f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
          f"max {delays[-1] * 1000:.1f} ms")
    print(f"late: {late} ticks more than 10 % of the 15 s tick ({0.1 * TICK_S:.1f} s), {late_here} more than "
          f"10 % of the compressed period ({0.1 * interval * 1000:.0f} ms); {nodes} nodes serving at the end")
    keeps_up = recorder.missed + recorder.skipped == 0 and max(steady) <= TICK_S
    print("keeps up on one core" if keeps_up else "DOES NOT keep up on one core")
    return 0 if keeps_up else 1


if __name__ == "__main__":
    sys.exit(main())
