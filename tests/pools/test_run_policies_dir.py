"""`autoscaler run --policies DIR` as an operator runs it: real nginx, local node processes, files
removed while it runs."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from autoscaler.balancers.nginx import parse_upstream
from autoscaler.domain import CloudState
from autoscaler.embedded import EmbeddedNginx
from autoscaler.embedded._process import free_port
from autoscaler.policy.load import load_policy
from autoscaler.providers.local import LocalProvider
from autoscaler.testing import read_metric, wait_until
from autoscaler.testing.embedded_fixtures import require_binary

REPO = Path(__file__).resolve().parents[2]

LOCAL_POOL = """
pool: {pool}
provider: {{kind: local, state_dir: "{fleet}", load_delay: 0.2s}}
launch:
  model_version: v1
  instance_types: [{{name: local-gpu, streams: 10, price_per_hour: 0.5}}]
balancer: {balancer}
metrics: {{url: "http://127.0.0.1:1", timeout: 1s}}
health: {{boot_timeout: 60s, timeout: 1s}}
scaling:
  min_nodes: {min_nodes}
  max_nodes: 2
  tick: 1s
  checks:
    - {{name: streams, type: target_tracking, query: "sum(asr_active_streams)", target: 7}}
"""


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[EmbeddedNginx]:
    """A private nginx on a loopback port."""
    require_binary("nginx")
    with EmbeddedNginx(tmp_path / "nginx") as server:
        yield server


def test_removing_a_file_stops_managing_the_pool_and_leaves_its_nodes(
    tmp_path: Path, nginx: EmbeddedNginx
) -> None:
    """Two pools in one `run`; deleting one pool's file stops its ticks (logged with the file) while
    the other keeps ticking; the removed pool's node keeps running, stays in its nginx upstream and
    still serves through nginx."""
    policies = tmp_path / "policies"
    policies.mkdir()
    balancer = (
        f'{{kind: nginx, upstream: {nginx.upstream}, upstream_file: "{nginx.upstream_file}", '
        f'nginx_conf: "{nginx.conf_path}", nginx_prefix: "{nginx.root}/"}}'
    )
    gone = policies / "gone.yaml"
    gone.write_text(
        LOCAL_POOL.format(pool="gone", fleet=tmp_path / "fleet-gone", balancer=balancer, min_nodes=1)
    )
    (policies / "kept.yaml").write_text(
        LOCAL_POOL.format(pool="kept", fleet=tmp_path / "fleet-kept", balancer="{kind: none}", min_nodes=0)
    )
    fleets = {p: LocalProvider.for_policy(load_policy(policies / f"{p}.yaml")) for p in ("gone", "kept")}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_file = tmp_path / "run.log"
    with log_file.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "autoscaler.cli", "run", "--policies", str(policies), "--rescan", "0.3",
             "--metrics-port", str(port), "--store", f"sqlite:///{tmp_path / 's.db'}"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        in_upstream = wait_until(
            lambda: {b.instance_id for b in parse_upstream(nginx.upstream_file.read_text())},
            timeout_s=60, interval_s=0.2, message="gone's node joins nginx",
        )
        nodes = fleets["gone"].list_instances("gone")
        assert {i.id for i in nodes} == in_upstream and len(nodes) == 1
        healthz = httpx.get(f"{url}/healthz", timeout=5).json()
        assert set(healthz["pools"]) == {"gone", "kept"}

        gone.unlink()
        wait_until(lambda: "pool_stopped" in log_file.read_text(), timeout_s=20, interval_s=0.2,
                   message="gone is stopped")
        kept_then = read_metric(url, "autoscaler_ticks_total", pool="kept", result="ok")
        wait_until(
            lambda: read_metric(url, "autoscaler_ticks_total", pool="kept", result="ok") >= kept_then + 1,
            timeout_s=20, interval_s=0.2, message="kept keeps ticking",
        )
        assert set(httpx.get(f"{url}/healthz", timeout=5).json()["pools"]) == {"kept"}
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200

        after = fleets["gone"].list_instances("gone")
        assert [(i.id, i.state) for i in after] == [(nodes[0].id, CloudState.RUNNING)]
        assert {b.instance_id for b in parse_upstream(nginx.upstream_file.read_text())} == in_upstream
        assert httpx.get(f"{nginx.url}/healthz", timeout=5).status_code == 200  # served by that node
        lines = log_file.read_text().splitlines()
        removed = [line for line in lines if "pool_removed" in line]
        assert removed and "info" in removed[0] and str(gone) in removed[0]

        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        assert process.returncode == 0, log_file.read_text()[-3000:]
        # Stopping the controller leaves every node too.
        assert [(i.id, i.state) for i in fleets["gone"].list_instances("gone")] == [
            (nodes[0].id, CloudState.RUNNING)
        ]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pool, fleet in fleets.items():
            fleet.stop_all(pool)
