"""The controller's own metrics (prometheus_client) and health, served by ``autoscaler run --metrics-port``.

``/metrics`` is the Prometheus exposition of ``ControllerMetrics``; ``/healthz`` answers 200 while
every pool has had a successful tick within its last N tick periods, 503 (with the pools that are
late, as JSON) otherwise, so a supervisor or a load balancer can tell a controller that is up but
not working from one that works.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from autoscaler.domain import Decision, Sample
from autoscaler.metrics.plausible import IMPLAUSIBLE

if TYPE_CHECKING:
    from autoscaler.controller import TickOutcome
    from autoscaler.policy.forecast import Forecast
    from autoscaler.policy.model import PoolPolicy

#: The forecast's modes, one ``autoscaler_forecast_mode`` series each (1 for the mode in force).
FORECAST_MODES = ("forecast_only", "forecast_and_scale")


#: Reason kinds named by node or pool, left out of the reasons metric to keep its cardinality low.
_UNLABELLED_REASONS = frozenset({"victim", "final"})
#: The fixed names of the engine's ``warm`` reasons; any other name of that kind is the id of a warm
#: instance being discarded, counted under ``discard`` so that no label set is left behind per node.
_WARM_REASON_NAMES = frozenset({"no-warm-pool", "start", "empty", "shrink", "prepare"})

#: ``/healthz`` fails after this many tick periods without a successful tick (``--unhealthy-after``).
UNHEALTHY_AFTER_TICKS = 3


@dataclass
class _PoolHealth:
    interval_s: float
    since: float  # when the controller started expecting ticks of this pool
    last_success: float | None = None
    failures_in_a_row: int = 0


class Health:
    """Whether each pool has had a successful tick within ``unhealthy_after`` tick periods.

    A pool is expected from ``expect`` (the service's start); until its first success it is judged
    from that moment, so a controller that never manages a tick turns unhealthy too. A tick that
    hangs counts like a failed one: time passes without a success.
    """

    def __init__(self, unhealthy_after: int = UNHEALTHY_AFTER_TICKS, clock: Callable[[], float] = time.time):
        self.unhealthy_after = unhealthy_after
        self._clock = clock
        self._pools: dict[str, _PoolHealth] = {}
        self._lock = threading.Lock()

    def expect(self, pool: str, interval_s: float) -> None:
        """Ticks of ``pool`` are due every ``interval_s`` from now on."""
        with self._lock:
            state = self._pools.get(pool)
            if state is None:
                self._pools[pool] = _PoolHealth(interval_s=interval_s, since=self._clock())
            else:
                state.interval_s = interval_s

    def forget(self, pool: str) -> None:
        """``pool`` is no longer managed here."""
        with self._lock:
            self._pools.pop(pool, None)

    def tick(self, pool: str, ok: bool) -> None:
        """A tick of ``pool`` finished, successfully or not."""
        with self._lock:
            state = self._pools.setdefault(pool, _PoolHealth(interval_s=0.0, since=self._clock()))
            if ok:
                state.last_success, state.failures_in_a_row = self._clock(), 0
            else:
                state.failures_in_a_row += 1

    def report(self) -> tuple[bool, dict[str, Any]]:
        """``(healthy, details)``: unhealthy when ANY pool is late; details name the ``failing`` pools
        and give per pool its last success, seconds since, limit and failures in a row."""
        now = self._clock()
        pools: dict[str, Any] = {}
        healthy = True
        with self._lock:
            for pool, state in sorted(self._pools.items()):
                reference = state.last_success if state.last_success is not None else state.since
                limit = state.interval_s * self.unhealthy_after
                late = state.interval_s > 0 and now - reference > limit
                healthy = healthy and not late
                pools[pool] = {
                    "healthy": not late,
                    "last_success": state.last_success,
                    "seconds_since_success": round(now - reference, 3),
                    "limit_s": limit,
                    "failed_ticks_in_a_row": state.failures_in_a_row,
                }
        failing = [pool for pool, state in pools.items() if not state["healthy"]]
        return healthy, {"status": "ok" if healthy else "unhealthy", "failing": failing, "pools": pools}


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every 15 s are not log lines."""


class MetricsServer:
    """``/metrics`` and ``/healthz`` on one port, in a daemon thread (``autoscaler run --metrics-port``)."""

    def __init__(self, metrics: ControllerMetrics, host: str = "127.0.0.1", port: int = 0) -> None:
        self.metrics = metrics
        self._prometheus = make_wsgi_app(metrics.registry)
        self.server: WSGIServer = make_server(
            host, port, self._app, server_class=ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self.port = self.server.server_port
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="autoscaler-metrics", daemon=True
        )

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            healthy, details = self.metrics.health.report()
            body = json.dumps(details).encode()
            status = "200 OK" if healthy else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return self._prometheus(environ, start_response)  # type: ignore[no-any-return]

    def start(self) -> MetricsServer:
        """Serve in the background."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()


class ControllerMetrics:
    """Counters and gauges about ticks, decisions, nodes, missing data and policy reloads, the
    controller's build, its modes per pool, and its ``health``."""

    def __init__(self, registry: CollectorRegistry | None = None, health: Health | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.health = health or Health()
        self._seen: set[str] = set()
        self._modes: set[str] = set()
        r = self.registry
        from autoscaler import __version__

        self.build = Info("autoscaler_build", "The controller's version and Python.", registry=r)
        self.build.info({"version": __version__, "python": platform.python_version()})
        self.started = time.time()
        self.last_success = Gauge(
            "autoscaler_last_successful_tick_timestamp_seconds",
            "Unix time of the pool's last tick without errors (the controller's start until the first).",
            ["pool"],
            registry=r,
        )
        self.cost = Gauge(
            "autoscaler_cost_per_hour",
            "What the pool's live nodes cost per hour at the policy's price_per_hour (its currency).",
            ["pool"],
            registry=r,
        )
        self.decision_reasons = Counter(
            "autoscaler_decision_reasons",
            "Reasons in the trails of decisions that moved the pool (checks, schedules, bounds, windows).",
            ["pool", "direction", "kind", "name"],
            registry=r,
        )
        self.notifications = Counter(
            "autoscaler_notifications",
            "Webhook notifications by event and result (sent, failed after retries, dropped: queue full).",
            ["pool", "event", "result"],
            registry=r,
        )
        self.min_nodes = Gauge("autoscaler_min_nodes", "The policy's min_nodes.", ["pool"], registry=r)
        self.max_nodes = Gauge("autoscaler_max_nodes", "The policy's max_nodes.", ["pool"], registry=r)
        self.paused = Gauge(
            "autoscaler_paused", "1 while the pool is paused (observed and recorded, not acted on).",
            ["pool"], registry=r,
        )
        self.shadow = Gauge(
            "autoscaler_shadow", "1 while the pool runs in shadow mode (decides, never acts).",
            ["pool"], registry=r,
        )
        self.ticks = Counter("autoscaler_ticks", "Ticks run, by result.", ["pool", "result"], registry=r)
        self.tick_seconds = Histogram(
            "autoscaler_tick_duration_seconds",
            "Wall time of one tick.",
            ["pool"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.desired = Gauge(
            "autoscaler_desired_nodes", "Nodes the last decision wants.", ["pool"], registry=r
        )
        self.nodes = Gauge(
            "autoscaler_nodes", "Nodes by lifecycle after the last tick.", ["pool", "lifecycle"], registry=r
        )
        self.decisions = Counter(
            "autoscaler_decisions", "Decisions by direction.", ["pool", "direction"], registry=r
        )
        self.launches = Counter("autoscaler_launched_nodes", "Nodes launched.", ["pool"], registry=r)
        self.terminations = Counter(
            "autoscaler_terminated_nodes", "Nodes terminated, by reason.", ["pool", "reason"], registry=r
        )
        self.boot_failures = Counter(
            "autoscaler_boot_failures", "Nodes replaced for failing to boot.", ["pool"], registry=r
        )
        self.boot_failure_streak = Gauge(
            "autoscaler_boot_failures_in_a_row",
            "Nodes replaced for failing to boot since one last joined.",
            ["pool"],
            registry=r,
        )
        self.warm_starts = Counter(
            "autoscaler_warm_starts",
            "Warm-pool starts, by result (started; no-capacity, gone and error fall back to a cold launch).",
            ["pool", "result"],
            registry=r,
        )
        self.warm_target = Gauge(
            "autoscaler_warm_pool_target",
            "The warm pool's size the last decision wanted.",
            ["pool"],
            registry=r,
        )
        self.balancer_errors = Counter(
            "autoscaler_balancer_errors", "Balancer changes rejected.", ["pool"], registry=r
        )
        self.store_errors = Counter(
            "autoscaler_store_errors", "Ticks stopped because the store failed.", ["pool"], registry=r
        )
        self.is_leader = Gauge(
            "autoscaler_leader", "1 while this controller is the pool's one actor.", ["pool"], registry=r
        )
        self.missing = Gauge(
            "autoscaler_check_missing_data",
            "1 when a check had no data last tick.",
            ["pool", "check"],
            registry=r,
        )
        self.no_data = Counter(
            "autoscaler_check_no_data",
            "Ticks a check had no data, by kind: implausible (a value the signal cannot take) or missing.",
            ["pool", "check", "kind"],
            registry=r,
        )
        self.check_value = Gauge(
            "autoscaler_check_value", "Last value read for a check.", ["pool", "check"], registry=r
        )
        self.policy_ok = Gauge(
            "autoscaler_policy_valid",
            "0 while the policy file on disk is invalid and the last valid one is kept.",
            ["pool"],
            registry=r,
        )
        self.forecast_demand = Gauge(
            "autoscaler_forecast_demand",
            "Peak forecast demand within the forecast's lead (NaN: no forecast).", ["pool"], registry=r,
        )
        self.forecast_floor = Gauge(
            "autoscaler_forecast_floor_nodes",
            "Nodes the forecast's peak needs, applied or not (NaN: no forecast).", ["pool"], registry=r,
        )
        self.forecast_history = Gauge(
            "autoscaler_forecast_history_seconds",
            "Span of demand history the forecast in force was made from.", ["pool"], registry=r,
        )
        self.forecast_mode = Gauge(
            "autoscaler_forecast_mode",
            "1 for the forecast mode in force (forecast_only records, forecast_and_scale acts).",
            ["pool", "mode"], registry=r,
        )

    def policy_valid(self, pool: str, valid: bool) -> None:
        """Whether the file on disk is the policy in force."""
        self.policy_ok.labels(pool).set(1 if valid else 0)

    def forget_policy(self, pool: str) -> None:
        """A broken file that never ran was removed: drop its ``autoscaler_policy_valid`` series."""
        with contextlib.suppress(KeyError):  # never set
            self.policy_ok.remove(pool)

    def forget(self, pool: str) -> None:
        """``pool`` is no longer managed by this controller (its file was removed).

        Its gauges are dropped, so alerts on a fleet at max or on an old last-successful-tick time
        do not fire for a pool nobody manages here any more, and ``/healthz`` stops expecting its
        ticks. Counters stay: their rate falls to zero and their totals remain true.
        """
        self.health.forget(pool)
        self._seen.discard(pool)
        self._modes.discard(pool)
        for gauge in [m for m in vars(self).values() if isinstance(m, Gauge)]:
            for family in gauge.collect():
                for sample in family.samples:
                    if sample.labels.get("pool") == pool:
                        # Sample labels come in the gauge's label order.
                        with contextlib.suppress(KeyError):  # removed with a sibling sample
                            gauge.remove(*sample.labels.values())

    def check_sample(self, pool: str, check: str, sample: Sample) -> None:
        """A check's reading this tick."""
        self.missing.labels(pool, check).set(0 if sample.has_data else 1)
        if not sample.has_data:
            kind = "implausible" if (sample.error or "").startswith(IMPLAUSIBLE) else "missing"
            self.no_data.labels(pool, check, kind).inc()
        if sample.has_data and sample.value is not None:
            self.check_value.labels(pool, check).set(sample.value)

    def forecast(self, policy: PoolPolicy, forecast: Forecast | None, decision: Decision) -> None:
        """The forecast in force and what the decision's forecast step made of it."""
        config = policy.scaling.forecast
        pool = policy.pool
        if config is None:  # none, or removed by a policy reload: no stale forecast series
            for gauge, labels in ((self.forecast_demand, ()), (self.forecast_floor, ()),
                                  (self.forecast_history, ()),
                                  *((self.forecast_mode, (m,)) for m in FORECAST_MODES)):
                with contextlib.suppress(KeyError):  # never set for this pool
                    gauge.remove(pool, *labels)
            return
        for mode in FORECAST_MODES:
            self.forecast_mode.labels(pool, mode).set(1 if mode == config.mode else 0)
        self.forecast_history.labels(pool).set(forecast.history_s if forecast is not None else 0)
        detail = next((r.detail for r in decision.reasons if r.kind == "forecast"), {})
        demand, floor = detail.get("demand"), detail.get("floor")
        self.forecast_demand.labels(pool).set(demand if isinstance(demand, int | float) else math.nan)
        self.forecast_floor.labels(pool).set(floor if isinstance(floor, int | float) else math.nan)

    def launched(self, pool: str, count: int) -> None:
        """Nodes launched this tick."""
        if count:
            self.launches.labels(pool).inc(count)

    def terminated(self, pool: str, reason: str) -> None:
        """A node terminated; the reason is reduced to its first words to keep label cardinality low."""
        self.terminations.labels(
            pool, reason.split(":", maxsplit=1)[0].split("(", maxsplit=1)[0].strip()[:40]
        ).inc()

    def boot_failure(self, pool: str) -> None:
        """A node did not become healthy in time."""
        self.boot_failures.labels(pool).inc()

    def boot_failures_in_a_row(self, pool: str, count: int) -> None:
        """Consecutive boot failures (launches back off while this is 2 or more)."""
        self.boot_failure_streak.labels(pool).set(count)

    def warm_start(self, pool: str, result: str) -> None:
        """One warm instance's start: ``started``, or why it fell back to a cold launch."""
        self.warm_starts.labels(pool, result).inc()

    def balancer_error(self, pool: str) -> None:
        """The balancer rejected a change."""
        self.balancer_errors.labels(pool).inc()

    def leader(self, pool: str, leader: bool) -> None:
        """Whether this controller acts on the pool this tick."""
        self.is_leader.labels(pool).set(1 if leader else 0)

    def store_error(self, pool: str) -> None:
        """The store could not be read or written; the tick acted on nothing further."""
        self.store_errors.labels(pool).inc()

    def notification(self, pool: str, event: str, result: str) -> None:
        """A webhook notification was sent, failed or dropped."""
        self.notifications.labels(pool, event, result).inc()

    def bounds(self, pool: str, min_nodes: int, max_nodes: int) -> None:
        """The policy's bounds, so alerts can tell a fleet held at its maximum."""
        self._ensure_pool(pool)
        self.min_nodes.labels(pool).set(min_nodes)
        self.max_nodes.labels(pool).set(max_nodes)

    def _ensure_pool(self, pool: str) -> None:
        # Series exist from the start of the first tick at 0, so the first error is an increase
        # alerts can see (a counter born at 1 shows no increase).
        if pool in self._seen:
            return
        self._seen.add(pool)
        for result in ("ok", "error"):
            self.ticks.labels(pool, result)
        self.balancer_errors.labels(pool)
        self.store_errors.labels(pool)
        self.boot_failures.labels(pool)
        self.launches.labels(pool)
        self.last_success.labels(pool).set(self.started)
        if pool not in self._modes:
            self.mode(pool)  # 0 until something says the pool is paused or in shadow mode

    def mode(self, pool: str, *, paused: bool = False, shadow: bool = False) -> None:
        """Whether the pool is paused or in shadow mode."""
        self._modes.add(pool)
        self.paused.labels(pool).set(1 if paused else 0)
        self.shadow.labels(pool).set(1 if shadow else 0)

    def tick_done(self, pool: str, outcome: TickOutcome, seconds: float) -> None:
        """Everything a finished tick tells."""
        self._ensure_pool(pool)
        self.ticks.labels(pool, "ok" if outcome.ok else "error").inc()
        self.health.tick(pool, outcome.ok)
        if outcome.ok:
            self.last_success.labels(pool).set(outcome.at.timestamp())
        self.tick_seconds.labels(pool).observe(seconds)
        if outcome.cost_per_hour is not None:
            self.cost.labels(pool).set(outcome.cost_per_hour)
        if outcome.decision is not None:
            decision = outcome.decision
            self.desired.labels(pool).set(decision.desired)
            self.decisions.labels(pool, decision.direction.value).inc()
            self.warm_target.labels(pool).set(decision.warm_target)
            direction = decision.direction.value
            if direction != "hold":
                for reason in decision.reasons:
                    if reason.kind not in _UNLABELLED_REASONS:
                        name = reason.name
                        if reason.kind == "warm" and name not in _WARM_REASON_NAMES:
                            name = "discard"
                        self.decision_reasons.labels(pool, direction, reason.kind, name).inc()
        counts = {"booting": 0, "serving": 0, "draining": 0, "preparing": 0, "stopped": 0, "starting": 0}
        for lifecycle in outcome.nodes.values():
            counts[lifecycle] = counts.get(lifecycle, 0) + 1
        for lifecycle, count in counts.items():
            self.nodes.labels(pool, lifecycle).set(count)
