"""Prometheus history as demand: a real Prometheus whose TSDB was backfilled with promtool."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from autoscaler.embedded import EmbeddedPrometheus
from autoscaler.embedded._process import free_port
from autoscaler.errors import ScenarioError
from autoscaler.simulate.demand import build_demand
from autoscaler.simulate.scenario import load_scenario
from autoscaler.testing.embedded_fixtures import backfill, require_binary

pytestmark = pytest.mark.integration

STEP = 15
HOURS = 3
#: History starts this long before the test runs (inside Prometheus's one-day retention).
AGO = timedelta(hours=6)


def streams_at(index: int) -> tuple[int, int]:
    """Active streams on the two recorded nodes at sample ``index``: a daily-ish wave plus a step."""
    wave = 20 + round(15 * math.sin(index / 40))
    return wave, 10 + (index // 240) * 5


def openmetrics(base: int) -> str:
    """Three hours of two nodes' active streams and a request counter at 2 req/s, every 15 s."""
    lines = ["# TYPE asr_active_streams gauge"]
    samples = HOURS * 3600 // STEP
    for i in range(samples):
        a, b = streams_at(i)
        lines.append(f'asr_active_streams{{pool="asr-prod",node="a"}} {a} {base + i * STEP}')
        lines.append(f'asr_active_streams{{pool="asr-prod",node="b"}} {b} {base + i * STEP}')
    lines.append("# TYPE asr_requests counter")
    lines += [
        f'asr_requests_total{{pool="asr-prod"}} {2 * i * STEP} {base + i * STEP}' for i in range(samples)
    ]
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedPrometheus, datetime]]:
    """A started Prometheus whose TSDB holds the backfilled history, and the history's first instant."""
    require_binary("prometheus")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    base = now - AGO
    root = tmp_path_factory.mktemp("prometheus")
    prometheus = EmbeddedPrometheus(root, scrape_interval_s=5.0)
    backfill(openmetrics(int(base.timestamp())), prometheus.data_dir)
    with prometheus:
        yield prometheus, base


def _scenario(tmp_path: Path, prometheus: EmbeddedPrometheus, start: datetime, **demand: object) -> Path:
    fields = {
        "format": "prometheus",
        "url": prometheus.url,
        "query": 'sum(asr_active_streams{pool="asr-prod"})',
        "start": start.isoformat().replace("+00:00", "Z"),
        "duration": "1h",
        "step": "15s",
        "scale": 1.0,
    }
    fields.update(demand)
    body = "\n".join(f"  {k}: {v!r}" if isinstance(v, str) else f"  {k}: {v}" for k, v in fields.items())
    path = tmp_path / "prom.yaml"
    path.write_text(
        f"policy: {Path(__file__).resolve().parents[2] / 'policies' / 'asr-aws.yaml'}\n"
        f"demand:\n{body}\n"
        "workload: {audio_seconds: {distribution: fixed, mean: 60}}\n"
        "fleet: {streams_per_node: 10, boot_seconds: 120, price_per_hour: 1.0}\n"
        "pool: {min_nodes: 2, max_nodes: 20}\nseed: 3\n"
    )
    return path


def test_recorded_streams_replay_as_they_were(
    history: tuple[EmbeddedPrometheus, datetime], tmp_path: Path
) -> None:
    """A range query of the pool's recorded streams gives the backfilled values, second by second."""
    prometheus, base = history
    start = base + timedelta(minutes=30)
    demand = build_demand(load_scenario(_scenario(tmp_path, prometheus, start)), streams_per_node=10)
    assert demand.duration_s == 3600
    assert demand.replay_at == start
    first = 30 * 60 // STEP
    expected = np.repeat([sum(streams_at(first + i)) for i in range(3600 // STEP)], STEP)
    assert np.array_equal(demand.streams, expected)


def test_recorded_streams_scale_to_peak_nodes(
    history: tuple[EmbeddedPrometheus, datetime], tmp_path: Path
) -> None:
    """peak_nodes scales recorded streams so their peak needs exactly that many nodes."""
    prometheus, base = history
    path = _scenario(tmp_path, prometheus, base + timedelta(minutes=30), scale="null", peak_nodes=15)
    path.write_text(path.read_text().replace("  scale: 'null'\n", ""))
    demand = build_demand(load_scenario(path), streams_per_node=10)
    assert -(-int(demand.streams.max()) // 10) == 15


def test_recorded_request_rate_becomes_arrivals(
    history: tuple[EmbeddedPrometheus, datetime], tmp_path: Path
) -> None:
    """kind: arrivals reads a request rate; 2 req/s of 60 s audio averages 120 concurrent streams."""
    prometheus, base = history
    path = _scenario(
        tmp_path,
        prometheus,
        base + timedelta(hours=1),
        kind="arrivals",
        query='sum(rate(asr_requests_total{pool="asr-prod"}[1m]))',
    )
    demand = build_demand(load_scenario(path), streams_per_node=10)
    assert demand.arrivals is not None and demand.arrivals == pytest.approx(7200, rel=0.05)
    assert float(demand.streams.mean()) == pytest.approx(120, rel=0.05)
    assert demand.streams[0] > 90  # the hour before the window was fetched as warm-up


def test_window_without_history_is_a_scenario_error(
    history: tuple[EmbeddedPrometheus, datetime], tmp_path: Path
) -> None:
    """A window Prometheus has no data for says so instead of replaying zeros."""
    prometheus, base = history
    path = _scenario(tmp_path, prometheus, base - timedelta(days=2))
    with pytest.raises(ScenarioError, match="has no data for"):
        build_demand(load_scenario(path), streams_per_node=10)


def test_dry_run_from_prometheus_end_to_end(
    history: tuple[EmbeddedPrometheus, datetime], tmp_path: Path, cli_app: typer.Typer
) -> None:
    """The CLI replays the live pool's own recorded load and writes the report."""
    prometheus, base = history
    path = _scenario(tmp_path, prometheus, base + timedelta(minutes=30))
    result = CliRunner().invoke(cli_app, ["dry-run", "--scenario", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "out" / "report.html").exists()


def test_unreachable_prometheus_is_an_error_line(
    tmp_path: Path, cli_app: typer.Typer, write_scenario: Callable[..., Path]
) -> None:
    """Nothing listening at the URL: error: ... cannot read history, exit status 2."""
    url = f"http://127.0.0.1:{free_port()}"
    path = write_scenario(
        demand={
            "format": "prometheus",
            "url": url,
            "query": "up",
            "path": None,
            "start": "2025-09-01T00:00:00Z",
            "duration": "1h",
            "timeout": "2s",
        }
    )
    result = CliRunner().invoke(cli_app, ["dry-run", "--scenario", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: demand: cannot read history from Prometheus")
