"""Webhook notifications against a real local HTTP receiver: delivery, retries, and a receiver that
hangs without ever delaying a tick."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from autoscaler.controller import TickOutcome
from autoscaler.domain import Decision, Direction, Reason
from autoscaler.errors import PolicyError
from autoscaler.notify import Notification, NotificationState, WebhookNotifier
from autoscaler.policy.load import load_policy
from autoscaler.policy.model import WebhookConfig
from autoscaler.providers.local import LocalProvider
from autoscaler.store import MemoryStore
from autoscaler.testing import wait_until
from autoscaler.wiring import build_runtime

#: Longest a hanging receiver holds a request, so a failed test cannot park the suite.
MAX_HANG_S = 30.0


class Receiver:
    """A webhook receiver on 127.0.0.1: answers 200, or 500 for the first ``fail_first`` POSTs, or hangs
    (until ``release`` or ``MAX_HANG_S``) while ``hang`` is set."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        self.fail_first = 0
        self.hang = threading.Event()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                receiver.attempts += 1
                if receiver.hang.is_set():
                    receiver.release.wait(MAX_HANG_S)
                status = 500 if receiver.attempts <= receiver.fail_first else 200
                if status == 200:
                    receiver.bodies.append(body)
                try:
                    self.send_response(status)
                    self.end_headers()
                except OSError:
                    pass  # the client gave up (its timeout) while we hung

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Release any hung request and stop serving."""
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A running receiver, stopped after the test."""
    hook = Receiver()
    yield hook
    hook.stop()


def _decision(direction: Direction, *reasons: Reason) -> Decision:
    final = Reason("final", "asr", f"{direction.value} to 3")
    return Decision(
        pool="asr", at=datetime(2026, 11, 28, 9, 0, tzinfo=UTC), ready=2, booting=0, draining=0,
        desired=3 if direction == Direction.OUT else 2, launch=1 if direction == Direction.OUT else 0,
        victims=("i-1",) if direction == Direction.IN else (), reasons=(*reasons, final),
    )


def _outcome(**fields: Any) -> TickOutcome:
    return TickOutcome(pool="asr", at=datetime(2026, 11, 28, 9, 0, tzinfo=UTC), **fields)


def test_events_are_derived_once_per_episode() -> None:
    """Scale-out and scale-in each tick they happen; a failure once when it starts, then `recovered`;
    a fallback once when it starts."""
    state = NotificationState()
    out = state.events(_outcome(decision=_decision(Direction.OUT), launched=["i-1"]))
    assert [n.event for n in out] == ["scale_out"] and "launched 1" in out[0].text
    assert [n.event for n in state.events(_outcome(errors=["balancer rejected"]))] == ["failure"]
    assert state.events(_outcome(errors=["balancer rejected"])) == []
    fallback = Reason("fallback", "missing-data", "no data for 3 ticks: hold")
    events = state.events(_outcome(decision=_decision(Direction.HOLD, fallback)))
    assert [n.event for n in events] == ["recovered", "fallback"]
    assert state.events(_outcome(decision=_decision(Direction.HOLD, fallback))) == []
    scale_in = state.events(_outcome(decision=_decision(Direction.IN), drained=["i-1"]))
    assert [n.event for n in scale_in] == ["scale_in"] and scale_in[0].body()["drained"] == ["i-1"]


def test_scale_out_is_delivered_as_json(receiver: Receiver) -> None:
    """A scale-out reaches the receiver as JSON with event, pool, a `text` line and what was launched."""
    results: list[tuple[str, str]] = []
    notifier = WebhookNotifier(WebhookConfig(url=receiver.url),
                               on_result=lambda n, r: results.append((n.event, r)))
    try:
        notifier.tick(_outcome(decision=_decision(Direction.OUT), launched=["i-1"]))
        wait_until(lambda: results, timeout_s=30, message="a delivery result")
    finally:
        notifier.close()
    assert results == [("scale_out", "sent")]
    (body,) = receiver.bodies
    assert body["event"] == "scale_out" and body["pool"] == "asr" and body["launched"] == ["i-1"]
    assert body["text"].startswith("asr: scaling out")


def test_server_errors_are_retried(receiver: Receiver) -> None:
    """Two 500 answers, then 200: the notification is sent on the third attempt."""
    receiver.fail_first = 2
    results: list[str] = []
    notifier = WebhookNotifier(
        WebhookConfig(url=receiver.url, retries=3), on_result=lambda _n, r: results.append(r),
        backoff_max_s=0.5,
    )
    try:
        notifier.send(Notification("failure", "asr", "2026-11-28T09:00:00+00:00", "asr: tick failed"))
        wait_until(lambda: results, timeout_s=30, message="a delivery result")
    finally:
        notifier.close()
    assert results == ["sent"] and receiver.attempts == 3 and len(receiver.bodies) == 1


def test_hanging_receiver_never_blocks_and_gives_up_after_retries(receiver: Receiver) -> None:
    """While the receiver hangs, queuing 150 notifications returns at once (each delivery would take
    at least 2 × 0.5 s): the first fails after its timeout and one retry, the overflow is dropped."""
    receiver.hang.set()
    results: list[str] = []
    notifier = WebhookNotifier(
        WebhookConfig(url=receiver.url, timeout="500ms", retries=1),
        on_result=lambda _n, r: results.append(r), backoff_max_s=0.5,
    )
    try:
        started = time.monotonic()
        for i in range(150):
            notifier.send(Notification("failure", "asr", str(i), "asr: tick failed"))
        queued_in = time.monotonic() - started
        assert queued_in < 10.0, f"queuing took {queued_in:.2f} s: the sender blocked"
        wait_until(lambda: "failed" in results, timeout_s=60, message="the first delivery given up")
        assert results.count("dropped") >= 150 - 100 - 1
    finally:
        receiver.release.set()
        notifier.close(timeout_s=2.0)
    assert receiver.attempts >= 2


POLICY = """
pool: notified
provider: {{kind: local, state_dir: "{fleet}", load_delay: 1s}}
launch:
  model_version: v1
  instance_types: [{{name: local-gpu, streams: 10, price_per_hour: 0.5}}]
balancer: {{kind: none}}
metrics: {{url: "http://127.0.0.1:1", timeout: 1s}}
scaling: {{min_nodes: 1, max_nodes: 2, tick: 1s}}
notifications:
  webhook: {{url: "{url}", timeout: 1s, retries: 0}}
"""


def test_a_real_tick_is_not_delayed_by_a_hanging_webhook(tmp_path: Path, receiver: Receiver) -> None:
    """A controller tick that scales out, with the policy's webhook hanging: the after-tick step returns
    without waiting, the next tick runs while the POST still hangs, and the notification is counted
    as failed once its 1 s timeout passes (retries: 0)."""
    path = tmp_path / "notified.yaml"
    path.write_text(POLICY.format(fleet=tmp_path / "fleet", url=receiver.url))
    receiver.hang.set()
    runtime = build_runtime(path, store=MemoryStore())
    registry = runtime.controller.telemetry.registry

    def failed() -> float | None:
        return registry.get_sample_value(
            "autoscaler_notifications_total", {"pool": "notified", "event": "scale_out", "result": "failed"}
        )

    try:
        outcome = runtime.controller.tick()
        assert outcome.launched, outcome.errors
        started = time.monotonic()
        runtime.after_tick(outcome)
        assert time.monotonic() - started < 5.0
        wait_until(lambda: receiver.attempts >= 1, timeout_s=30, message="the webhook called")
        second = runtime.controller.tick()  # runs while the POST hangs
        runtime.after_tick(second)
        assert second.ok and receiver.bodies == []
        wait_until(failed, timeout_s=30, message="the hung notification counted as failed")
    finally:
        receiver.release.set()
        runtime.close()
        LocalProvider.for_policy(load_policy(path)).stop_all("notified")
    assert failed() == 1.0


def test_url_from_an_unset_environment_variable_is_a_policy_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """`url_env` naming an unset variable is a clear PolicyError, not a crash at the first event."""
    monkeypatch.delenv("ASR_WEBHOOK", raising=False)
    with pytest.raises(PolicyError, match="ASR_WEBHOOK"):
        WebhookNotifier(WebhookConfig(url_env="ASR_WEBHOOK"))
