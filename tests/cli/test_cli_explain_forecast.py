"""`autoscaler explain` on a pool with a forecast: the forecast step and where its history came from,
against a real Prometheus backfilled with three days of the pool's demand (promtool)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from autoscaler.embedded import EmbeddedPrometheus
from autoscaler.testing.embedded_fixtures import backfill, require_binary

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

POLICY = """
pool: cli-forecast
provider: {{kind: local, state_dir: "{fleet}", load_delay: 1s}}
launch:
  model_version: v1
  instance_types: [{{name: local-gpu, streams: 10, price_per_hour: 0.5}}]
balancer: {{kind: none}}
metrics: {{url: "{url}", timeout: 2s, staleness: 10m}}
scaling:
  min_nodes: 0
  max_nodes: 40
  checks:
    - {{name: demand, type: target_tracking, per: pool, query: "sum(asr_concurrent_streams)", target: 10}}
  forecast: {{mode: forecast_only, check: demand, lead: 15m}}
"""


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPrometheus]:
    """Prometheus with three days of demand a minute apart, up to two minutes ago: 50 streams, 120 at
    the same hour of every earlier day as now + 10 minutes."""
    require_binary("prometheus")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    busy_hour = (now + timedelta(minutes=10)).hour
    lines = ["# TYPE asr_concurrent_streams gauge"]
    t = now - timedelta(days=3)
    while t <= now - timedelta(minutes=2):
        value = 120 if t.hour == busy_hour and t.date() != now.date() else 50
        lines.append(f"asr_concurrent_streams {value} {int(t.timestamp())}")
        t += timedelta(minutes=1)
    lines.append("# EOF")
    root = tmp_path_factory.mktemp("prometheus")
    server = EmbeddedPrometheus(root, scrape_interval_s=15.0, retention="30d")
    backfill("\n".join(lines) + "\n", server.data_dir)
    with server:
        yield server


def test_explain_shows_the_forecast_step_and_its_history(
    prometheus: EmbeddedPrometheus, tmp_path: Path
) -> None:
    """The trail has a look-ahead and forecast section with the floor (not applied: forecast_only), and
    the forecast's origin: when it was made, how much history, which query, the next refresh."""
    policy = tmp_path / "forecast.yaml"
    policy.write_text(POLICY.format(fleet=tmp_path / "fleet", url=prometheus.url))
    result = subprocess.run(
        [sys.executable, "-m", "autoscaler.cli", "explain", "--policy", str(policy),
         "--store", f"sqlite:///{tmp_path / 's.db'}"],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "look-ahead and forecast:\n  [forecast] demand: forecast: 120.0 within 900s needs 12 nodes " \
           "(forecast_only: not applied)" in out
    assert re.search(r"^forecast \(forecast_only\): made at \S+ from 7[12]\.\d h of the history of "
                     r"sum\(asr_concurrent_streams\); next refresh at \S+$", out, re.MULTILINE), out
    assert "  note: history: " in out and "peaks from 1 range query" in out
