"""Automatic retention: `autoscaler run` prunes by the policy's `store.retention`; the store stays bounded."""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from autoscaler.store import MemoryStore, SqlStore
from autoscaler.store.retention import Retention
from autoscaler.testing import wait_until

REPO = Path(__file__).resolve().parents[2]

POLICY = """
pool: kept
provider: {{kind: local, state_dir: "{fleet}"}}
launch:
  model_version: v1
  instance_types: [{{name: local-gpu, streams: 10, price_per_hour: 0.5}}]
balancer: {{kind: none}}
metrics: {{url: "http://127.0.0.1:1", timeout: 1s}}
scaling:
  min_nodes: 0
  max_nodes: 2
  tick: 1s
store: {{retention: 2d}}
"""


def test_a_year_of_ticks_stays_bounded_by_retention() -> None:
    """A year of ticks (one per 6 h, to stay quick) with 30 days' retention never holds more than 30 days."""
    store = MemoryStore()
    retention = Retention(store)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    most = 0
    for step in range(365 * 4):
        at = start + timedelta(hours=6 * step)
        store.record_tick("asr", at, {}, {"desired": 1}, {})
        retention.after_tick("asr", timedelta(days=30), at)
        most = max(most, len(store.ticks))
    assert most <= 30 * 4 + 1
    assert len(store.ticks) == 30 * 4 + 1


def test_retention_prunes_at_most_once_per_period() -> None:
    """After one prune, the next ticks within the hour do not prune again; null retention never prunes."""
    store = MemoryStore()
    retention = Retention(store)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    assert retention.after_tick("asr", timedelta(days=1), now) is not None
    assert retention.after_tick("asr", timedelta(days=1), now + timedelta(minutes=59)) is None
    assert retention.after_tick("asr", timedelta(days=1), now + timedelta(minutes=61)) is not None
    assert retention.after_tick("ocr", None, now) is None


def test_run_prunes_old_ticks_by_the_policys_retention(tmp_path: Path) -> None:
    """`autoscaler run` on a policy with `store: {retention: 2d}` deletes the pool's 3-day-old ticks."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    store = SqlStore(url)
    old = datetime.now(UTC) - timedelta(days=3)
    for i in range(5):
        store.record_tick("kept", old + timedelta(minutes=i), {}, {"desired": 0}, {})
    store.record_tick("other", old, {}, {"desired": 0}, {})
    policy = tmp_path / "kept.yaml"
    policy.write_text(POLICY.format(fleet=tmp_path / "fleet"))
    process = subprocess.Popen(
        [sys.executable, "-m", "autoscaler.cli", "run", "--policy", str(policy), "--store", url],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_until(
            lambda: all(datetime.fromisoformat(t["at"]) > old + timedelta(hours=1)
                        for t in store.recent_ticks("kept", None))
            and len(store.recent_ticks("kept", None)) >= 1,
            timeout_s=60, interval_s=0.2, message="old ticks pruned",
        )
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "pruned" in err and "ticks=5" in err
    assert len(store.recent_ticks("other")) == 1  # another pool's records follow that pool's policy
    store.close()
