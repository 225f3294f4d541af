"""Running a sweep: every variant × scenario × seed replayed in worker processes on all cores.

Each task is one variant on one (scenario, seed), replayed by ``dry_run`` (the code of
``autoscaler dry-run``, nothing else). A worker builds the demand and replays the HPA-like baseline
of a (scenario, seed) once, on its first task there, and lends both to its later tasks there
(``dry_run(..., reuse=...)``): on a 7-day trace the demand takes about half a replay and the
baseline a whole one, so per task that would triple the work. Tasks are queued scenario by scenario
so a worker's cache (the two most recent (scenario, seed)) keeps hitting.

Workers ignore SIGINT; the parent turns Ctrl-C into ending the pool (its workers are terminated and
joined), and the caller writes what has finished and exits 130.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from autoscaler.errors import AutoscalerError, ScenarioError, SweepError
from autoscaler.policy.model import PoolPolicy
from autoscaler.simulate.run import DryRun, dry_run
from autoscaler.simulate.scenario import Scenario
from autoscaler.simulate.sweep import Sweep
from autoscaler.simulate.sweep_report import RUN_FIELDS

#: (scenario, seed) demands a worker keeps: the current one and the previous one.
CACHE_SIZE = 2
#: Without a terminal, one progress line at the first finished run and then at most this often.
PLAIN_PROGRESS_EVERY_S = 10.0
#: The printed frontier table shows at most this many rows (frontier.json and the report have all).
TABLE_ROWS = 40


@dataclass(frozen=True)
class Task:
    """One replay: a variant's policy on a scenario with its seed (and base policy) in place."""

    index: int
    key: str
    scenario: Scenario
    variant: str
    policy: PoolPolicy


def tasks(sweep: Sweep) -> list[Task]:
    """Every variant × scenario × seed, grouped by (scenario, seed)."""
    out: list[Task] = []
    for number, (scenario, base) in enumerate(sweep.runs):
        key = f"{number}:{scenario.source}#{scenario.spec.seed}"
        for variant in sweep.variants:
            out.append(Task(len(out), key, scenario, variant.label, variant.policies[base.path]))
    return out


_CACHE: OrderedDict[str, DryRun] = OrderedDict()


def run_task(task: Task) -> dict[str, Any]:
    """Replay one task (in a worker); return its figures and the baselines' on the same demand."""
    started = time.perf_counter()
    cached = _CACHE.get(task.key)
    result = dry_run(task.scenario, policies=[(task.variant, task.policy)], reuse=cached)
    if cached is None:
        # Keep the demand and the baseline, not this variant's per-tick arrays.
        _CACHE[task.key] = replace(result, runs=())
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(task.key)
    figures = result.runs[0].summary
    hpa = result.hpa_like.summary
    return {
        "index": task.index,
        "variant": task.variant,
        "scenario": task.scenario.name,
        "seed": task.scenario.spec.seed,
        "figures": {k: figures[k] for k in RUN_FIELDS},
        "hpa_like": {k: hpa[k] for k in RUN_FIELDS} | {"targets": hpa.get("targets", {})},
        "oracle": {k: result.oracle[k] for k in ("cost", "node_seconds", "launches", "peak_nodes")},
        "seconds": round(time.perf_counter() - started, 3),
        "built_demand": cached is None,
        "worker": os.getpid(),
    }


def _worker_init() -> None:
    # Ctrl-C reaches the whole foreground process group; only the parent acts on it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_jobs() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def execute(work: Sequence[Task], jobs: int, on_result: Callable[[dict[str, Any]], None]) -> bool:
    """Run ``work`` on ``jobs`` worker processes, calling ``on_result`` as each task finishes.

    Returns True when interrupted by Ctrl-C (the workers are terminated and joined first). An error
    in a task ends the pool and is raised here.
    """
    # spawn: workers start clean (no copy of the parent's threads or progress display).
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(processes=max(1, min(jobs, len(work))), initializer=_worker_init)
    try:
        for result in pool.imap_unordered(run_task, work, chunksize=1):
            on_result(result)
    except KeyboardInterrupt:
        pool.terminate()
        pool.join()
        return True
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()
    return False


class PlainProgress:
    """Progress as plain lines on a stream: the first finished run, then at most every ``every`` s."""

    def __init__(self, total: int, stream: Any = None, every: float = PLAIN_PROGRESS_EVERY_S) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self.started = time.monotonic()
        self.last = float("-inf")

    def update(self, done: int) -> None:
        """Say how far the sweep is, when due (always at the first and the last run)."""
        now = time.monotonic()
        if done not in (1, self.total) and now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.started
        left = elapsed / done * (self.total - done) if done else 0.0
        print(
            f"sweep: {done}/{self.total} runs done, {_clock(elapsed)} elapsed, about {_clock(left)} left",
            file=self.stream,
            flush=True,
        )


def _clock(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def run_sweep(
    sweep_file: Path, out: Path, *, jobs: int | None = None, echo: Callable[[str], None] = print
) -> int:
    """``autoscaler dry-run --sweep``: load, replay on all cores, write the outputs; return the exit status.

    0 when every run finished, 130 after Ctrl-C (what finished is written), 2 for bad input (every
    problem printed as ``file:line:column: where: message``) or a run that failed.
    """
    from autoscaler.simulate.sweep import load_sweep

    try:
        sweep = load_sweep(sweep_file)
    except SweepError as exc:
        for problem in exc.problems or [str(exc)]:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted before any run; nothing written", file=sys.stderr)
        return 130
    try:
        out.mkdir(parents=True, exist_ok=True)  # before hours of replays, not after
    except OSError as exc:
        print(f"error: {out}: cannot create the output folder: {exc.strerror or exc}", file=sys.stderr)
        return 2
    work = tasks(sweep)
    workers = max(1, min(jobs or default_jobs(), len(work)))
    scenarios = len({s.source for s, _ in sweep.runs})
    print(
        f"sweep {sweep.name}: {len(sweep.variants)} variants × {scenarios} scenario(s) × "
        f"{len(sweep.runs) // max(scenarios, 1)} seed(s) = {len(work)} runs on {workers} worker processes",
        file=sys.stderr,
        flush=True,
    )
    # Ctrl-C stops the sweep even when the shell started it with SIGINT ignored (``cmd &``).
    original = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _run(sweep, work, workers, out, echo)
    finally:
        signal.signal(signal.SIGINT, original)


def _run(sweep: Sweep, work: Sequence[Task], workers: int, out: Path, echo: Callable[[str], None]) -> int:
    from autoscaler.simulate.sweep_report import table_rows, write_sweep_outputs

    err = Console(stderr=True)
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    failure: AutoscalerError | None = None
    show = sys.stderr.isatty()
    plain = PlainProgress(len(work))
    with Progress(
        TextColumn("sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("runs"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not show,
    ) as bar:
        task_id = bar.add_task("sweep", total=len(work))

        def on_result(result: dict[str, Any]) -> None:
            results.append(result)
            if show:
                bar.update(task_id, completed=len(results))
            else:
                plain.update(len(results))

        try:
            interrupted = execute(work, workers, on_result)
        except AutoscalerError as exc:  # a trace that fails to read in a worker, say
            interrupted, failure = False, exc
    # A second Ctrl-C while the results are written would leave them half written.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        written, points, front = write_sweep_outputs(
            sweep,
            results,
            out,
            interrupted=interrupted or failure is not None,
            total=len(work),
            elapsed_s=time.perf_counter() - started,
            jobs=workers,
        )
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGINT, previous)
    head, rows = table_rows(sweep, points, front)
    table = Table(*head, title=f"Pareto frontier ({sweep.spec.aggregate}), cheapest first")
    shown = rows if len(rows) <= TABLE_ROWS else [*rows[: TABLE_ROWS - 2], *rows[-2:]]
    for row in shown:
        table.add_row(*row)
    Console(width=200).print(table)
    if len(shown) < len(rows):
        echo(f"({len(rows) - len(shown)} more frontier points in {out / 'frontier.json'})")
    echo(
        f"wrote {out / 'results.json'}, {out / 'frontier.json'}, {out / 'report.html'} "
        f"and {len([p for p in written if p.parent.name == 'frontier'])} files in {out / 'frontier'}"
    )
    if failure is not None:
        print(f"error: {failure}", file=sys.stderr)
        return 2
    if interrupted:
        print(f"interrupted: {len(results)} of {len(work)} runs finished and written", file=sys.stderr)
        return 130
    return 0
