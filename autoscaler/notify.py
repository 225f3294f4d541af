"""Webhook notifications: scale-out, scale-in, failures (and recovery) and fallbacks of a pool.

What to send is derived from each tick's outcome by ``NotificationState.events`` (pure: no I/O,
failures and fallbacks reported when they start, not every tick they last). Sending is the
``WebhookNotifier``'s background thread: ``tick`` only puts events on a bounded queue, so a slow,
failing or hanging receiver never delays a tick; when the queue is full the event is dropped and
counted. Each POST has the policy's timeout per attempt and its retries (tenacity, exponential
backoff with full jitter) on connection errors, timeouts and 5xx answers.

The JSON body carries a ``text`` line (what Slack- and Mattermost-style incoming webhooks show)
beside the structured fields.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from autoscaler.controller import TickOutcome
from autoscaler.errors import PolicyError
from autoscaler.policy.model import WebhookConfig

log = structlog.get_logger("autoscaler.notify")

#: Events waiting to be sent at most; beyond that new ones are dropped (and counted), never waited for.
QUEUE_SIZE = 100


@dataclass(frozen=True)
class Notification:
    """One event about one pool, as the webhook receives it."""

    event: str
    pool: str
    at: str
    text: str
    detail: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        """The JSON body POSTed."""
        return {"event": self.event, "pool": self.pool, "at": self.at, "text": self.text, **self.detail}


@dataclass
class NotificationState:
    """What was last reported for a pool, so a failure or a fallback is sent once, when it starts."""

    failing: bool = False
    fallbacks: frozenset[str] = frozenset()

    def events(self, outcome: TickOutcome) -> list[Notification]:
        """The events ``outcome`` gives rise to, updating this state."""
        at = outcome.at.isoformat(timespec="seconds")
        pool = outcome.pool
        decision = outcome.decision
        summary = decision.summary() if decision is not None else "no decision"
        reason = decision.reasons[-1].message if decision is not None and decision.reasons else ""
        common = {"decision": summary, "reason": reason}
        found: list[Notification] = []
        if outcome.launched:
            found.append(Notification(
                "scale_out", pool, at,
                f"{pool}: scaling out, launched {len(outcome.launched)} ({summary}): {reason}",
                {**common, "launched": outcome.launched},
            ))
        scaled_in = [i for i, why in outcome.terminated.items() if why.startswith("scale-in")]
        if outcome.drained or scaled_in:
            found.append(Notification(
                "scale_in", pool, at,
                f"{pool}: scaling in, draining {len(outcome.drained)} ({summary}): {reason}",
                {**common, "drained": outcome.drained,
                 "terminated": {i: outcome.terminated[i] for i in scaled_in}},
            ))
        if outcome.errors and not self.failing:
            found.append(Notification(
                "failure", pool, at, f"{pool}: tick failed: {'; '.join(outcome.errors)}",
                {**common, "errors": outcome.errors},
            ))
        elif not outcome.errors and self.failing:
            found.append(
                Notification("recovered", pool, at, f"{pool}: ticks succeed again ({summary})", common)
            )
        self.failing = bool(outcome.errors)
        fallbacks = [r for r in decision.reasons if r.kind == "fallback"] if decision is not None else []
        names = frozenset(r.name for r in fallbacks)
        started = [r for r in fallbacks if r.name not in self.fallbacks]
        if started:
            found.append(Notification(
                "fallback", pool, at, f"{pool}: fallback: {'; '.join(r.message for r in started)}",
                {**common, "fallbacks": [r.to_dict() for r in started]},
            ))
        self.fallbacks = names
        return found


class _ServerError(Exception):
    """The receiver answered 5xx: worth another attempt."""


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, httpx.TransportError | _ServerError)


def webhook_url(config: WebhookConfig) -> str:
    """The URL from the policy, or from the environment variable it names (``PolicyError`` if unset)."""
    if config.url is not None:
        return config.url
    assert config.url_env is not None  # the model requires one of the two
    value = os.environ.get(config.url_env, "")
    if not value.startswith(("http://", "https://")):
        raise PolicyError(
            f"notifications.webhook.url_env: environment variable {config.url_env} "
            "is not set to an http(s) URL"
        )
    return value


class WebhookNotifier:
    """Sends a pool's notifications to one webhook from a daemon thread; ``tick`` never blocks.

    ``on_result(event, result)`` is told ``sent``, ``failed`` (after every retry) or ``dropped``
    (queue full), for the controller's metrics.
    """

    def __init__(
        self,
        config: WebhookConfig,
        *,
        on_result: Callable[[Notification, str], None] | None = None,
        queue_size: int = QUEUE_SIZE,
        backoff_max_s: float = 10.0,
    ) -> None:
        self.config = config
        self.url = webhook_url(config)
        self._events = set(config.events)
        self._on_result = on_result or (lambda _n, _r: None)
        self._queue: queue.Queue[Notification | None] = queue.Queue(maxsize=queue_size)
        self._states: dict[str, NotificationState] = {}
        self._client = httpx.Client(timeout=config.timeout.total_seconds())
        self._retrying = Retrying(
            stop=stop_after_attempt(config.retries + 1),
            wait=wait_random_exponential(multiplier=0.5, max=backoff_max_s),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        self._thread = threading.Thread(target=self._run, name="autoscaler-notify", daemon=True)
        self._thread.start()

    def tick(self, outcome: TickOutcome) -> list[Notification]:
        """Queue the events of one tick the policy subscribes to; return them. Never blocks."""
        state = self._states.setdefault(outcome.pool, NotificationState())
        wanted = [n for n in state.events(outcome) if n.event in self._events]
        for notification in wanted:
            self.send(notification)
        return wanted

    def send(self, notification: Notification) -> None:
        """Queue one notification; drop it (logged and counted) when the queue is full."""
        try:
            self._queue.put_nowait(notification)
        except queue.Full:
            log.warning("notification_dropped", pool=notification.pool, notification=notification.event,
                        reason="queue full: the webhook is not keeping up")
            self._on_result(notification, "dropped")

    def _run(self) -> None:
        while True:
            notification = self._queue.get()
            if notification is None:
                return
            try:
                self._retrying(self._post, notification)
            except Exception as exc:  # the sender thread must outlive any receiver
                log.warning("notification_failed", pool=notification.pool, notification=notification.event,
                            url=self.url.split("?", 1)[0], error=f"{type(exc).__name__}: {exc}")
                self._on_result(notification, "failed")
            else:
                self._on_result(notification, "sent")

    def _post(self, notification: Notification) -> None:
        response = self._client.post(self.url, json=notification.body())
        if response.status_code >= 500:
            raise _ServerError(f"HTTP {response.status_code}")
        response.raise_for_status()

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued for up to ``timeout_s``, then stop (a hanging POST is abandoned)."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._client.close()
