"""``autoscaler run``: the controller's tick as an APScheduler interval job.

``max_instances=1`` so a slow tick is never overlapped by the next; ``coalesce=True`` so ticks
missed while one ran become one tick, not a burst. SIGTERM/SIGINT shut the scheduler down
between ticks (a tick in progress finishes first), as kube-downscaler does.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType

import structlog
from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler

from autoscaler.controller import TickOutcome
from autoscaler.wiring import Runtime

log = structlog.get_logger("autoscaler.service")

JOB_ID = "tick"


class TickService:
    """Runs ``runtime.controller.tick`` every policy tick period, following policy reloads."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        blocking: bool = True,
        on_tick: Callable[[TickOutcome], None] | None = None,
        interval_s: float | None = None,
    ) -> None:
        self.runtime = runtime
        self._on_tick = on_tick
        self._fixed_interval = interval_s
        self._interval = interval_s or runtime.watcher.current().scaling.tick.total_seconds()
        self.scheduler: BaseScheduler = (BlockingScheduler if blocking else BackgroundScheduler)(timezone=UTC)
        self.ticks = 0
        self.stopped = threading.Event()

    def _job(self) -> None:
        outcome = self.runtime.controller.tick()
        self.ticks += 1
        self.runtime.after_tick(outcome)
        if self._on_tick is not None:
            self._on_tick(outcome)
        wanted = self._fixed_interval or self.runtime.watcher.current().scaling.tick.total_seconds()
        if wanted != self._interval:
            # The policy's tick changed: follow it without a restart.
            self._interval = wanted
            self.scheduler.reschedule_job(JOB_ID, trigger="interval", seconds=wanted)
            self._expect()
            log.info("tick_interval_changed", seconds=wanted)

    def _job_failed(self, event: JobExecutionEvent) -> None:
        # Controller.tick never raises; this catches a failure in the callback, keeping the service up.
        log.error("tick_job_failed", error=repr(event.exception))

    def _expect(self) -> None:
        """Tell the health check how often this pool's ticks are due."""
        pool = self.runtime.watcher.current().pool
        self.runtime.controller.telemetry.health.expect(pool, self._interval)

    def start(self) -> None:
        """Schedule the job (first tick at once) and start; blocks until ``stop`` when blocking."""
        self._expect()
        self.scheduler.add_job(
            self._job,
            "interval",
            seconds=self._interval,
            id=JOB_ID,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(self._interval)),
            next_run_time=datetime.now(UTC),
        )
        self.scheduler.add_listener(self._job_failed, EVENT_JOB_ERROR)
        log.info("service_started", interval_s=self._interval)
        self.scheduler.start()

    def stop(self) -> None:
        """Stop scheduling; wait for a tick in progress to finish."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.stopped.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the service cleanly between ticks."""

        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("service_stopping", signal=signal.Signals(signum).name)
            # shutdown(wait=True) from the handler would block the scheduler's own thread; hand it off.
            threading.Thread(target=self.stop, name="autoscaler-stop").start()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
