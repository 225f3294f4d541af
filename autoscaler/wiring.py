"""Which implementation each adapter gets, from the policy's ``provider``/``balancer``/``metrics`` keys.

The only place that knows the concrete classes; SDK modules are imported only for the kinds a
policy names, so a local pool never imports boto3 or the Alibaba SDK.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from autoscaler.clock import SystemClock
from autoscaler.controller import Adapters, Controller, TickOutcome
from autoscaler.domain import Instance
from autoscaler.executor import Executor, ShadowExecutor, WorldExecutor
from autoscaler.leader import leadership_for
from autoscaler.metrics.file_sd import write_targets
from autoscaler.metrics.prometheus import PrometheusSource
from autoscaler.notify import Notification, WebhookNotifier
from autoscaler.policy.load import PolicyWatcher
from autoscaler.policy.model import (
    AlbBalancerConfig,
    AlibabaProviderConfig,
    AwsProviderConfig,
    LocalProviderConfig,
    NginxBalancerConfig,
    PoolPolicy,
)
from autoscaler.probes import HttpNodeProbe
from autoscaler.protocols import Balancer, Clock, Provider, Store
from autoscaler.store import open_store
from autoscaler.store.retention import Retention
from autoscaler.telemetry import ControllerMetrics


def build_provider(policy: PoolPolicy) -> Provider:
    """The provider the policy names."""
    config = policy.provider
    if isinstance(config, LocalProviderConfig):
        from autoscaler.providers.local import LocalProvider

        return LocalProvider.for_policy(policy)
    if isinstance(config, AwsProviderConfig):
        from autoscaler.providers.aws import AwsProvider

        return AwsProvider.for_policy(policy)
    if isinstance(config, AlibabaProviderConfig):
        from autoscaler.providers.alibaba import AlibabaProvider

        return AlibabaProvider.for_policy(policy)
    raise AssertionError(f"unhandled provider kind {config!r}")  # pragma: no cover - the model is closed


def build_balancer(policy: PoolPolicy) -> Balancer:
    """The balancer the policy names."""
    config = policy.balancer
    if isinstance(config, NginxBalancerConfig):
        from autoscaler.balancers.nginx import NginxBalancer

        return NginxBalancer(config)
    if isinstance(config, AlbBalancerConfig):
        from autoscaler.balancers.alb import AlbBalancer

        return AlbBalancer(config)
    from autoscaler.balancers.none import NoBalancer

    return NoBalancer()


def _write_targets(path: str, pool: str, instances: list[Instance]) -> None:
    write_targets(path, instances, {"pool": pool})


@dataclass
class Runtime:
    """A controller with the objects it was built from (so callers can close them)."""

    controller: Controller
    watcher: PolicyWatcher
    store: Store
    closers: list[Any] = field(default_factory=list)
    retention: Retention | None = None
    notifier: WebhookNotifier | None = None

    def after_tick(self, outcome: TickOutcome) -> None:
        """Between ticks of ``autoscaler run``: queue the tick's notifications (never blocking) and
        prune records past the policy's retention."""
        if self.notifier is not None:
            self.notifier.tick(outcome)
        if self.retention is None:
            self.retention = Retention(self.store)
        self.retention.after_tick(outcome.pool, self.watcher.current().store.retention, outcome.at)

    def close(self) -> None:
        """Send queued notifications (briefly), close HTTP clients and database pools."""
        if self.notifier is not None:
            self.notifier.close()
        for thing in self.closers:
            thing.close()


def build_runtime(
    policy_path: str | Path,
    store_url: str | None = None,
    *,
    clock: Clock | None = None,
    telemetry: ControllerMetrics | None = None,
    store: Store | None = None,
    shadow: bool = False,
) -> Runtime:
    """Everything ``run``/``once``/``explain`` need for one policy file.

    ``shadow``: the controller gets a ``ShadowExecutor`` (decides and records its plan, changes
    nothing) instead of the ``WorldExecutor``; nothing else differs.

    Adapters follow the policy as loaded at start; a reloaded policy changes the rules, not the
    adapters (changing provider or balancer kind needs a restart, as it would in any controller).
    """
    watcher = PolicyWatcher(policy_path)
    policy = watcher.current()
    real_store = store or open_store(store_url)
    metrics = PrometheusSource(policy.metrics)
    probe = HttpNodeProbe(health_path=policy.health.path, timeout_s=policy.health.timeout.total_seconds())
    targets = policy.metrics.file_sd_path
    adapters = Adapters(
        provider=build_provider(policy),
        balancer=build_balancer(policy),
        metrics=metrics,
        store=real_store,
        probe=probe,
        clock=clock or SystemClock(),
        write_targets=partial(_write_targets, targets, policy.pool) if targets else None,
        history=metrics,
    )

    def policy_error() -> str | None:
        error = watcher.last_error
        return "; ".join(error.problems) or str(error) if error else None

    leadership = leadership_for(store_url, policy.pool)
    executor: Executor = (
        ShadowExecutor(real_store, adapters.clock)
        if shadow
        else WorldExecutor(adapters.provider, adapters.balancer, real_store, adapters.clock, leadership)
    )
    controller = Controller(
        watcher.current, adapters, telemetry=telemetry, policy_error=policy_error, leadership=leadership,
        executor=executor,
    )
    closers: list[Any] = [metrics, probe, leadership]
    if hasattr(real_store, "close"):
        closers.append(real_store)
    notifier = None
    if policy.notifications.webhook is not None:
        counted = controller.telemetry

        def on_result(notification: Notification, result: str) -> None:
            counted.notification(notification.pool, notification.event, result)

        notifier = WebhookNotifier(policy.notifications.webhook, on_result=on_result)
    return Runtime(
        controller=controller, watcher=watcher, store=real_store, closers=closers, notifier=notifier
    )
