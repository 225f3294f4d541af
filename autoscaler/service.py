"""``autoscaler run``: every pool's tick as its own APScheduler interval job.

Each pool has its own job on its own single-thread executor: ``max_instances=1`` so a slow tick is
never overlapped by the next, ``coalesce=True`` so ticks missed while one ran become one tick, not a
burst, and a pool whose cloud call hangs holds only its own thread, so the other pools tick on time.
First ticks are spread over the period (a stable offset from the pool's name; a pool alone ticks
at once) so that many pools do not all tick at the same instant. A scan job re-reads the selected
policy files every ``rescan_s`` (polling modification times: no inotify, so it also works on
network and container-mounted volumes) and starts or retires pools; a retired pool's job is
removed at once, its adapters are closed after its current tick, and its nodes are left as they
are. SIGTERM/SIGINT shut the scheduler down between ticks (ticks in progress finish first), as
kube-downscaler does.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Protocol

import structlog
from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler

from autoscaler.controller import TickOutcome
from autoscaler.pools import PoolEntry, ScanResult
from autoscaler.wiring import Runtime

log = structlog.get_logger("autoscaler.service")

#: Seconds between scans of the selected policy files for added and removed pools (``--rescan``).
RESCAN_S = 2.0
_SCAN_JOB = "scan"


class PoolSource(Protocol):
    """Where the service's pools come from (``pools.PoolSet``). Contract: ``scan`` never raises for
    one file's problem and returns only changes since the previous scan; ``close`` retires every
    running pool without touching its nodes."""

    def scan(self) -> ScanResult:
        """Pools to start and to retire since the previous scan."""
        ...

    def close(self) -> None:
        """Retire every pool."""
        ...


@dataclass
class _Scheduled:
    entry: PoolEntry
    job_id: str
    executor: str
    interval_s: float
    ticks: int = 0


class PoolService:
    """Runs every pool of ``pools`` on its own job at its own ``scaling.tick``, following policy
    reloads and added or removed files."""

    def __init__(
        self,
        pools: PoolSource,
        *,
        blocking: bool = True,
        on_tick: Callable[[TickOutcome], None] | None = None,
        interval_s: float | None = None,
        rescan_s: float | None = RESCAN_S,
        spread: bool = True,
    ) -> None:
        self.pools = pools
        self._spread = spread
        self._on_tick = on_tick
        self._fixed_interval = interval_s
        self._rescan_s = rescan_s
        self.scheduler: BaseScheduler = (BlockingScheduler if blocking else BackgroundScheduler)(
            timezone=UTC, executors={"default": ThreadPoolExecutor(2)}
        )
        self.ticks = 0
        self.stopped = threading.Event()
        self._scheduled: dict[str, _Scheduled] = {}  # by pool
        self._retiring: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stop_lock = threading.Lock()
        self._serial = itertools.count(1)

    # ------------------------------------------------------------------------------- pool jobs
    def ticks_of(self, pool: str) -> int:
        """Ticks the pool has finished since it was (last) added."""
        with self._lock:
            scheduled = self._scheduled.get(pool)
            return scheduled.ticks if scheduled else 0

    def running_pools(self) -> list[str]:
        """Pools with a job now."""
        with self._lock:
            return sorted(self._scheduled)

    def _interval_of(self, runtime: Runtime) -> float:
        return self._fixed_interval or runtime.watcher.current().scaling.tick.total_seconds()

    def _add(self, entry: PoolEntry) -> None:
        serial = next(self._serial)
        scheduled = _Scheduled(
            entry=entry,
            job_id=f"tick:{entry.pool}:{serial}",
            executor=f"pool:{entry.pool}:{serial}",
            interval_s=self._interval_of(entry.runtime),
        )
        with self._lock:
            self._scheduled[entry.pool] = scheduled
        # One thread per pool: its tick never waits for another pool's, however slow that one is.
        self.scheduler.add_executor(ThreadPoolExecutor(1), alias=scheduled.executor)
        entry.runtime.controller.telemetry.health.expect(entry.pool, scheduled.interval_s)
        first = datetime.now(UTC) + timedelta(seconds=self._offset(entry.pool, scheduled.interval_s))
        self.scheduler.add_job(
            self._tick,
            "interval",
            args=[scheduled],
            seconds=scheduled.interval_s,
            id=scheduled.job_id,
            executor=scheduled.executor,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(scheduled.interval_s)),
            next_run_time=first,
        )
        log.info("pool_scheduled", pool=entry.pool, file=str(entry.path), interval_s=scheduled.interval_s)

    def _offset(self, pool: str, interval_s: float) -> float:
        """Seconds before a new pool's first tick: a stable share of its period from its name, so
        many pools do not all tick at the same instant every period (one core serves them in turn
        instead of queueing them all at once); 0 without ``spread`` or for the only pool."""
        with self._lock:
            alone = list(self._scheduled) == [pool]
        if not self._spread or alone:
            return 0.0  # a single pool (`run --policy FILE`) ticks at once, as it always did
        return zlib.crc32(pool.encode()) / 2**32 * interval_s

    def _tick(self, scheduled: _Scheduled) -> None:
        entry = scheduled.entry
        with entry.lock:
            if entry.closed:  # retired while this run was being submitted
                return
            if entry.renamed():
                # Never act under another pool's name with this pool's leader lock: the next scan
                # retires this entry and starts the file as the pool it now names.
                log.warning("pool_renamed_tick_skipped", pool=entry.pool, file=str(entry.path))
                return
            outcome = entry.runtime.controller.tick()
            entry.runtime.after_tick(outcome)
        with self._lock:
            scheduled.ticks += 1
            self.ticks += 1
        if self._on_tick is not None:
            self._on_tick(outcome)
        wanted = self._interval_of(entry.runtime)
        if wanted != scheduled.interval_s:
            # The policy's tick changed: follow it without a restart.
            scheduled.interval_s = wanted
            with contextlib.suppress(JobLookupError):  # retired meanwhile
                self.scheduler.reschedule_job(scheduled.job_id, trigger="interval", seconds=wanted)
            entry.runtime.controller.telemetry.health.expect(entry.pool, wanted)
            log.info("tick_interval_changed", pool=entry.pool, seconds=wanted)

    def _retire(self, entry: PoolEntry) -> None:
        with self._lock:
            scheduled = self._scheduled.pop(entry.pool, None)
        if scheduled is None:
            entry.retire()
            return
        with contextlib.suppress(JobLookupError):  # already gone
            self.scheduler.remove_job(scheduled.job_id)
        # Waiting for a tick in progress happens off the scan job, so other pools' changes are not
        # held up by one pool's slow cloud.
        thread = threading.Thread(target=self._finish_retire, args=[scheduled],
                                  name=f"autoscaler-retire-{entry.pool}")
        self._retiring.append(thread)
        thread.start()

    def _finish_retire(self, scheduled: _Scheduled) -> None:
        entry = scheduled.entry
        entry.retire()  # after the current tick: takes the tick's lock
        with contextlib.suppress(KeyError):  # the scheduler was shut down meanwhile
            self.scheduler.remove_executor(scheduled.executor, shutdown=True)
        with self._lock:
            readded = entry.pool in self._scheduled  # the file was renamed: the pool lives on
        if not readded:
            entry.runtime.controller.telemetry.forget(entry.pool)
        log.info("pool_stopped", pool=entry.pool, file=str(entry.path), ticks=scheduled.ticks,
                 nodes="left as they are")

    def scan(self) -> ScanResult:
        """Apply one scan of the pool source: schedule added pools, retire removed ones."""
        result = self.pools.scan()
        for entry in result.removed:
            self._retire(entry)
        for entry in result.added:
            self._add(entry)
        return result

    def _scan_job(self) -> None:
        self.scan()

    def _job_failed(self, event: JobExecutionEvent) -> None:
        # Controller.tick never raises; this catches a failure in a callback or a scan, keeping the
        # service up.
        log.error("job_failed", job=event.job_id, error=repr(event.exception))

    # --------------------------------------------------------------------------------- lifecycle
    def start(self, first: ScanResult | None = None) -> None:
        """Schedule the pools (first ticks at once) and the scan job, and start; blocks until
        ``stop`` when blocking. ``first`` is a scan already made by the caller (to report problems
        before starting), applied instead of scanning again."""
        if first is None:
            self.scan()
        else:
            for entry in first.added:
                self._add(entry)
        if self._rescan_s:
            self.scheduler.add_executor(ThreadPoolExecutor(1), alias=_SCAN_JOB)
            self.scheduler.add_job(
                self._scan_job, "interval", seconds=self._rescan_s, id=_SCAN_JOB, executor=_SCAN_JOB,
                max_instances=1, coalesce=True,
            )
        self.scheduler.add_listener(self._job_failed, EVENT_JOB_ERROR)
        log.info("service_started", pools=self.running_pools(), rescan_s=self._rescan_s)
        self.scheduler.start()

    def stop(self) -> None:
        """Stop scheduling; wait for ticks in progress to finish; retire every pool (no node is
        touched)."""
        # Called from the signal handler's thread and by ``run`` once the scheduler returns: the
        # second caller waits for the first and finds everything done.
        with self._stop_lock:
            if self.stopped.is_set():
                return
            if self.scheduler.running:
                self.scheduler.shutdown(wait=True)
            for thread in list(self._retiring):
                thread.join()
            self.pools.close()
            self.stopped.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the service cleanly between ticks."""

        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("service_stopping", signal=signal.Signals(signum).name)
            # shutdown(wait=True) from the handler would block the scheduler's own thread; hand it off.
            threading.Thread(target=self.stop, name="autoscaler-stop").start()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


class _OnePool:
    """A ``PoolSource`` of one runtime built by the caller (the demo): added once, never removed;
    the caller closes the runtime."""

    def __init__(self, runtime: Runtime) -> None:
        pool = runtime.watcher.current().pool
        self._entry: PoolEntry | None = PoolEntry(path=runtime.watcher.path, pool=pool, runtime=runtime)

    def scan(self) -> ScanResult:
        """The runtime on the first scan, nothing after."""
        entry, self._entry = self._entry, None
        return ScanResult(added=[entry] if entry else [])

    def close(self) -> None:
        """The caller owns the runtime."""


class TickService(PoolService):
    """One runtime's ticks (``autoscaler demo``): a ``PoolService`` of that pool alone."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        blocking: bool = True,
        on_tick: Callable[[TickOutcome], None] | None = None,
        interval_s: float | None = None,
    ) -> None:
        self.runtime = runtime
        super().__init__(_OnePool(runtime), blocking=blocking, on_tick=on_tick, interval_s=interval_s,
                         rescan_s=None, spread=False)
