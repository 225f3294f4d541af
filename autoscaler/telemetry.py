"""The controller's own metrics (prometheus_client), served by ``autoscaler run --metrics-port``."""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from autoscaler.domain import Decision, Sample
from autoscaler.metrics.plausible import IMPLAUSIBLE

if TYPE_CHECKING:
    from autoscaler.controller import TickOutcome
    from autoscaler.policy.forecast import Forecast
    from autoscaler.policy.model import PoolPolicy

#: The forecast's modes, one ``autoscaler_forecast_mode`` series each (1 for the mode in force).
FORECAST_MODES = ("forecast_only", "forecast_and_scale")


class ControllerMetrics:
    """Counters and gauges about ticks, decisions, nodes, missing data and policy reloads."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
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

    def balancer_error(self, pool: str) -> None:
        """The balancer rejected a change."""
        self.balancer_errors.labels(pool).inc()

    def leader(self, pool: str, leader: bool) -> None:
        """Whether this controller acts on the pool this tick."""
        self.is_leader.labels(pool).set(1 if leader else 0)

    def store_error(self, pool: str) -> None:
        """The store could not be read or written; the tick acted on nothing further."""
        self.store_errors.labels(pool).inc()

    def tick_done(self, pool: str, outcome: TickOutcome, seconds: float) -> None:
        """Everything a finished tick tells."""
        self.ticks.labels(pool, "ok" if outcome.ok else "error").inc()
        self.tick_seconds.labels(pool).observe(seconds)
        if outcome.decision is not None:
            self.desired.labels(pool).set(outcome.decision.desired)
            self.decisions.labels(pool, outcome.decision.direction.value).inc()
        counts = {"booting": 0, "serving": 0, "draining": 0}
        for lifecycle in outcome.nodes.values():
            counts[lifecycle] = counts.get(lifecycle, 0) + 1
        for lifecycle, count in counts.items():
            self.nodes.labels(pool, lifecycle).set(count)
