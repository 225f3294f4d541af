"""Alert rules: promtool unit tests, metric names that exist, and one alert delivered end to end
(real controller /metrics → real Prometheus evaluating infra/prometheus/alerts.yml → real
Alertmanager → a webhook receiver)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoscaler.embedded import EmbeddedPrometheus
from autoscaler.embedded._process import free_port
from autoscaler.embedded.alertmanager import EmbeddedAlertmanager, alertmanager_binary
from autoscaler.telemetry import ControllerMetrics
from autoscaler.testing import wait_until
from autoscaler.testing.embedded_fixtures import require_binary

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "infra" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "infra" / "prometheus" / "alerts.test.yml"

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

#: Prometheus scraping the controller every second and evaluating the shipped rules every second.
PROMETHEUS_TEMPLATE = """
global:
  scrape_interval: @@{{scrape_interval}}
  scrape_timeout: @@{{scrape_timeout}}
  evaluation_interval: 1s
rule_files: [{rules}]
alerting:
  alertmanagers:
    - static_configs: [{{targets: ["{alertmanager}"]}}]
scrape_configs:
  - job_name: autoscaler
    static_configs: [{{targets: ["127.0.0.1:{metrics_port}"]}}]
"""


def test_promtool_unit_tests_pass() -> None:
    """`promtool check rules` accepts alerts.yml and `promtool test rules` passes every case."""
    require_binary("promtool")
    check = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run(
        ["promtool", "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, check=False
    )
    assert tests.returncode == 0 and "SUCCESS" in tests.stdout, tests.stdout + tests.stderr


def test_every_alert_has_a_promtool_case_and_uses_real_metrics() -> None:
    """Each alert is exercised by alerts.test.yml, and names only metrics the controller exports (or `up`)."""
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    tested = {t["alertname"] for case in cases for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert tested == {r["alert"] for r in rules}
    exported = {"up"}
    suffixes = {"counter": ["_total"], "info": ["_info"], "histogram": ["_bucket", "_count", "_sum"]}
    for family in ControllerMetrics().registry.collect():
        exported |= {family.name, *(family.name + suffix for suffix in suffixes.get(family.type, []))}
    for rule in rules:
        names = set(re.findall(r"\b(autoscaler_[a-z_]+|up)\b", rule["expr"]))
        assert names and names <= exported, f"{rule['alert']} uses unknown metrics {names - exported}"
        assert rule["annotations"]["runbook"], f"{rule['alert']} has no runbook"


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 keeping every JSON body POSTed to it (Alertmanager's webhook)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        """Firing alerts named ``alertname`` received so far."""
        return [
            alert
            for body in self.bodies
            for alert in body.get("alerts", [])
            if alert["labels"].get("alertname") == alertname and alert["status"] == "firing"
        ]

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """A webhook receiver, stopped after the test."""
    hook = WebhookReceiver()
    yield hook
    hook.stop()


def test_balancer_rejection_alert_reaches_the_webhook(tmp_path: Path, receiver: WebhookReceiver) -> None:
    """A controller whose balancer rejects every change raises AutoscalerBalancerRejections in a real
    Prometheus (the shipped rule, unchanged), and a real Alertmanager delivers it to the webhook."""
    require_binary("prometheus")
    if alertmanager_binary() is None:
        require_binary("prometheus-alertmanager")
    policy = tmp_path / "broken.yaml"
    policy.write_text(FAILING_POLICY.format(tmp=tmp_path))
    # The real nginx, whose config check fails on every change: the balancer rejects each tick.
    (tmp_path / "nginx.conf").write_text("this is not an nginx directive;\n")
    rules = tmp_path / "alerts.yml"
    shutil.copy(RULES, rules)
    metrics_port = free_port()
    controller = subprocess.Popen(
        [sys.executable, "-m", "autoscaler.cli", "run", "--policy", str(policy), "--metrics-port",
         str(metrics_port), "--store", f"sqlite:///{tmp_path / 's.db'}"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        with EmbeddedAlertmanager(tmp_path / "alertmanager", webhook_url=receiver.url) as alertmanager:
            template = tmp_path / "prometheus.yml.template"
            template.write_text(
                PROMETHEUS_TEMPLATE.format(rules=json.dumps(str(rules)), alertmanager=alertmanager.address,
                                           metrics_port=metrics_port)
            )
            with EmbeddedPrometheus(tmp_path / "prometheus", scrape_interval_s=1.0, template=template):
                alerts = wait_until(
                    lambda: receiver.firing("AutoscalerBalancerRejections"),
                    timeout_s=90, interval_s=0.5, message="AutoscalerBalancerRejections at the webhook",
                )
    finally:
        controller.send_signal(signal.SIGTERM)
        try:
            controller.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            controller.kill()
            controller.communicate()
    alert = alerts[0]
    assert alert["labels"]["pool"] == "broken" and alert["labels"]["severity"] == "critical"
    assert "rejected a change" in alert["annotations"]["summary"]
