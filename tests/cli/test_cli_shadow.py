"""`autoscaler run --shadow` as a real process beside a fleet the test runs with the local provider."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from autoscaler.domain import CloudState, IntentStatus
from autoscaler.policy.load import load_policy
from autoscaler.providers.local import LocalProvider
from autoscaler.store import SqlStore
from autoscaler.testing import wait_until

REPO = Path(__file__).resolve().parents[2]

POLICY = """
pool: shadowcli
provider: {{kind: local, state_dir: "{fleet}", load_delay: 0s}}
launch:
  model_version: v1
  instance_types: [{{name: local-gpu, streams: 10, price_per_hour: 0.5}}]
balancer: {{kind: none}}
metrics: {{url: "http://127.0.0.1:1", timeout: 1s}}
scaling:
  min_nodes: 3
  max_nodes: 4
  tick: 1s
  checks:
    - {{name: streams, type: target_tracking, query: "sum(asr_active_streams)", target: 7}}
"""


def test_run_shadow_records_beside_the_real_fleet_and_starts_nothing(tmp_path: Path) -> None:
    """The test's own "autoscaler" runs one real node process; `run --shadow` (min 3) records ticks
    with the real count 1 and a shadow launch of 2, and the pool still has exactly that one node."""
    policy_path = tmp_path / "shadow.yaml"
    policy_path.write_text(POLICY.format(fleet=tmp_path / "fleet"))
    policy = load_policy(policy_path)
    provider = LocalProvider.for_policy(policy)
    url = f"sqlite:///{tmp_path / 's.db'}"
    process = None
    try:
        from autoscaler.controller import launch_spec

        (theirs,) = provider.launch(launch_spec(policy), 1, "the-current-autoscaler").instances
        process = subprocess.Popen(
            [sys.executable, "-m", "autoscaler.cli", "run", "--shadow", "--policy", str(policy_path),
             "--store", url],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
        )
        store = SqlStore(url)
        wait_until(lambda: len(store.recent_ticks("shadowcli")) >= 2, timeout_s=60, interval_s=0.2,
                   message="two shadow ticks")
        ticks = store.recent_ticks("shadowcli", limit=None)
        intents = store.intents("shadowcli")
        lifecycles = store.lifecycles("shadowcli")
        store.close()
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert all(t["decision"]["mode"] == "shadow" for t in ticks)
        assert all(t["decision"]["fleet"]["real_nodes"] == 1 for t in ticks)
        assert ticks[-1]["decision"]["desired"] == 3
        assert intents and all(i.status == IntentStatus.SHADOW for i in intents)
        assert (intents[0].kind.value, intents[0].count) == ("launch", 2)
        assert lifecycles == {}
        live = [i.id for i in provider.list_instances("shadowcli") if i.state != CloudState.TERMINATED]
        assert live == [theirs.id]
    finally:
        if process is not None and process.poll() is None:
            process.kill()
        provider.stop_all("shadowcli")
