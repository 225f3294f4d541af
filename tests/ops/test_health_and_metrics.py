"""The controller's own health and metrics: /healthz fails after N tick periods without a good tick."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from autoscaler import __version__
from autoscaler.controller import TickOutcome
from autoscaler.embedded._process import free_port
from autoscaler.telemetry import ControllerMetrics, Health, MetricsServer
from autoscaler.testing import read_metric, wait_until

REPO = Path(__file__).resolve().parents[2]

#: A pool whose every tick fails: the real nginx, checking a config that is not one.
FAILING_POLICY = """
pool: broken
provider: {{kind: local, state_dir: "{tmp}/fleet"}}
launch:
  model_version: v1
  instance_types: [{{name: local-gpu, streams: 10, price_per_hour: 0.5}}]
balancer: {{kind: nginx, upstream_file: "{tmp}/upstream.conf", nginx_conf: "{tmp}/nginx.conf"}}
metrics: {{url: "http://127.0.0.1:1", timeout: 1s}}
scaling: {{min_nodes: 0, max_nodes: 2, tick: 1s}}
"""


class FakeTime:
    """A wall clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        """The current fake time."""
        return self.now


@pytest.fixture
def served() -> Iterator[tuple[ControllerMetrics, FakeTime, str]]:
    """Controller metrics with a fake-clocked health (N=3), served on a free loopback port."""
    clock = FakeTime()
    metrics = ControllerMetrics(health=Health(unhealthy_after=3, clock=clock))
    server = MetricsServer(metrics, "127.0.0.1", 0).start()
    yield metrics, clock, f"http://127.0.0.1:{server.port}"
    server.close()


def _outcome(ok: bool) -> TickOutcome:
    return TickOutcome(pool="asr", at=datetime.now(UTC), errors=[] if ok else ["balancer rejected"])


def test_healthz_follows_successful_ticks(served: tuple[ControllerMetrics, FakeTime, str]) -> None:
    """200 while a good tick happened within 3 periods; 503 with the late pool after; 200 again after one."""
    metrics, clock, url = served
    metrics.health.expect("asr", 15.0)
    assert httpx.get(f"{url}/healthz").status_code == 200  # just started: within the grace of 3 periods
    clock.now += 46
    late = httpx.get(f"{url}/healthz")
    assert late.status_code == 503 and late.json()["pools"]["asr"]["healthy"] is False
    metrics.tick_done("asr", _outcome(True), 0.1)
    assert httpx.get(f"{url}/healthz").status_code == 200
    for _ in range(3):
        clock.now += 15
        metrics.tick_done("asr", _outcome(False), 0.1)
    assert httpx.get(f"{url}/healthz").status_code == 200  # 45 s: exactly the limit
    clock.now += 15
    metrics.tick_done("asr", _outcome(False), 0.1)
    body = httpx.get(f"{url}/healthz")
    assert body.status_code == 503 and body.json()["pools"]["asr"]["failed_ticks_in_a_row"] == 4


def test_metrics_carry_build_info_last_success_and_modes(
    served: tuple[ControllerMetrics, FakeTime, str],
) -> None:
    """/metrics has build info, the last successful tick's time per pool, and paused/shadow gauges."""
    metrics, _clock, url = served
    outcome = _outcome(True)
    metrics.tick_done("asr", outcome, 0.2)
    assert read_metric(url, "autoscaler_build_info", version=__version__) == 1.0
    assert read_metric(url, "autoscaler_last_successful_tick_timestamp_seconds", pool="asr") == pytest.approx(
        outcome.at.timestamp()
    )
    assert read_metric(url, "autoscaler_paused", pool="asr") == 0.0
    assert read_metric(url, "autoscaler_shadow", pool="asr") == 0.0
    metrics.mode("asr", paused=True)
    assert read_metric(url, "autoscaler_paused", pool="asr") == 1.0


def test_run_healthz_turns_503_when_every_tick_fails(tmp_path: Path) -> None:
    """`autoscaler run --metrics-port` on a pool whose balancer always fails: /healthz goes 503 within
    N=2 tick periods, and the ticks are counted as errors."""
    policy = tmp_path / "broken.yaml"
    policy.write_text(FAILING_POLICY.format(tmp=tmp_path))
    # The real nginx, whose config check fails on every change: every tick's balancer apply fails.
    (tmp_path / "nginx.conf").write_text("this is not an nginx directive;\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "autoscaler.cli", "run", "--policy", str(policy), "--metrics-port", str(port),
         "--unhealthy-after", "2", "--store", f"sqlite:///{tmp_path / 's.db'}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )

    def healthz() -> int:
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code
        except httpx.HTTPError:
            return 0

    try:
        wait_until(lambda: healthz() == 503, timeout_s=60, interval_s=0.2, message="/healthz 503")
        assert read_metric(url, "autoscaler_ticks_total", pool="broken", result="error") >= 2
        assert read_metric(url, "autoscaler_balancer_errors_total", pool="broken") >= 2
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "[error    ] tick" in err or '"level": "error"' in err
