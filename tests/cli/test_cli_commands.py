"""The command line as a user runs it: `once`, `run` with a signal, `explain`, `history`, `demo`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoscaler.policy.load import load_policy
from autoscaler.providers.local import LocalProvider
from autoscaler.store import SqlStore
from autoscaler.testing import wait_until
from autoscaler.testing.embedded_fixtures import require_binary

REPO = Path(__file__).resolve().parents[2]

LOCAL_POLICY = """
pool: cli
provider: {{kind: local, state_dir: "{fleet}", load_delay: 1s}}
launch:
  model_version: v1
  instance_types: [{{name: local-gpu, streams: 10, price_per_hour: 0.5}}]
balancer: {{kind: none}}
metrics: {{url: "http://127.0.0.1:1", timeout: 1s}}
scaling:
  min_nodes: {min_nodes}
  max_nodes: 4
  tick: 1s
  checks:
    - {{name: streams, type: target_tracking, query: "sum(asr_active_streams)", target: 7}}
"""


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autoscaler.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


@pytest.fixture
def policy(tmp_path: Path) -> Iterator[Path]:
    """A local pool with min 2 nodes and a Prometheus that is not there (no data)."""
    path = tmp_path / "cli.yaml"
    path.write_text(LOCAL_POLICY.format(fleet=tmp_path / "fleet", min_nodes=2))
    yield path
    LocalProvider.for_policy(load_policy(path)).stop_all("cli")


def test_once_launches_min_then_nothing_more(policy: Path, tmp_path: Path) -> None:
    """`once` launches the policy's count; a second `once` launches nothing; both record a tick."""
    store = f"sqlite:///{tmp_path / 's.db'}"
    first = _cli("once", "--policy", str(policy), "--store", store, "--json")
    assert first.returncode == 0, first.stderr
    outcome = json.loads(first.stdout)
    assert len(outcome["launched"]) == 2 and outcome["decision"]["desired"] == 2
    second = json.loads(_cli("once", "--policy", str(policy), "--store", store, "--json").stdout)
    assert second["launched"] == [] and second["decision"]["launch"] == 0
    history = _cli("history", "--policy", str(policy), "--store", store)
    # Piped: a header line and one plain line per tick.
    assert history.returncode == 0 and len(history.stdout.strip().splitlines()) == 3


def test_explain_prints_the_reason_trail_and_changes_nothing(policy: Path, tmp_path: Path) -> None:
    """`explain` shows each check's vote (here: no data) and launches nothing."""
    result = _cli("explain", "--policy", str(policy), "--store", f"sqlite:///{tmp_path / 's.db'}")
    assert result.returncode == 0, result.stderr
    assert "streams" in result.stdout and "no data" in result.stdout
    assert LocalProvider.for_policy(load_policy(policy)).list_instances("cli") == []


def test_run_stops_cleanly_on_sigterm(policy: Path, tmp_path: Path) -> None:
    """`run` ticks on its interval and exits 0 between ticks when sent SIGTERM."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "autoscaler.cli",
            "run",
            "--policy",
            str(policy),
            "--store",
            f"sqlite:///{tmp_path / 's.db'}",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        # Two ticks recorded (one second apart) before the signal, however loaded the machine is.
        store = SqlStore(f"sqlite:///{tmp_path / 's.db'}")
        wait_until(lambda: len(store.recent_ticks("cli")) >= 2, timeout_s=60, interval_s=0.2,
                   message="two recorded ticks")
        store.close()
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "service_stopping" in err and "stopped after" in err
    ticks = int(err.rsplit("stopped after", 1)[1].split()[0])
    assert ticks >= 2


def test_bad_policy_is_a_clear_error(tmp_path: Path) -> None:
    """A broken policy stops `once` with file:line:column messages and no traceback."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("pool: x\nscaling: {min_nodes: 5, max_nodes: 2}\n")
    result = _cli("once", "--policy", str(broken))
    assert result.returncode == 2
    assert "broken.yaml:" in result.stderr and "Traceback" not in result.stderr


def test_demo_scales_out_and_in_and_cleans_up() -> None:
    """`demo --json` runs the whole loop on real nginx and Prometheus and reports both directions."""
    require_binary("nginx")
    require_binary("prometheus")
    result = _cli("demo", "--duration", "75", "--json", timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["scale_out_events"] >= 1 and summary["scale_in_events"] >= 1
    assert summary["peak_nodes"] >= 2 and summary["requests"] > 50
    assert summary["failed_requests"] == 0
    assert "streams in flight" in result.stderr  # live progress, not silence
    leftover = subprocess.run(["pgrep", "-f", "--pool asr-demo"], capture_output=True, text=True, check=False)
    assert leftover.stdout.strip() == "", "the demo left nodes running"
