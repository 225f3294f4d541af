"""The Grafana dashboard: generated from code (grafanalib), committed JSON equal to a regeneration,
the panels the operator needs, and every query valid PromQL for a real Prometheus."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from autoscaler.embedded import EmbeddedPrometheus
from autoscaler.telemetry import ControllerMetrics
from autoscaler.testing.embedded_fixtures import require_binary

REPO = Path(__file__).resolve().parents[2]
GENERATOR = REPO / "infra" / "grafana" / "dashboard.py"
COMMITTED = REPO / "infra" / "grafana" / "autoscaler.json"
#: Grafana's variables, as Grafana would expand them before sending a query.
EXPANSIONS = {"$pool": ".*", "$__rate_interval": "1m", "$__range": "1h"}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("autoscaler_dashboard", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(COMMITTED.read_text())["panels"] if p["type"] != "row"]


def test_committed_dashboard_is_the_generated_one() -> None:
    """infra/grafana/autoscaler.json is exactly what infra/grafana/dashboard.py generates (edit the code)."""
    assert _generator().render() == COMMITTED.read_text()


def test_dashboard_has_the_operator_panels() -> None:
    """Fleet by state, GPU memory by node, p95 latency, decisions with reasons, cost per hour are there."""
    titles = {p["title"] for p in _panels()}
    assert {"Fleet by state", "GPU memory by node", "p95 latency", "Decisions",
            "Reasons behind the decisions", "Cost per hour"} <= titles


def test_dashboard_queries_use_exported_metrics_and_parse_in_prometheus(tmp_path: Path) -> None:
    """Every query names only metrics the controller exports (or the nodes' DCGM/asr series) and a real
    Prometheus accepts it (no bad_data) once Grafana's variables are expanded."""
    require_binary("prometheus")
    exported = set()
    suffixes = {"counter": ["_total"], "info": ["_info"], "histogram": ["_bucket", "_count", "_sum"]}
    for family in ControllerMetrics().registry.collect():
        exported |= {family.name, *(family.name + s for s in suffixes.get(family.type, []))}
    queries = [t["expr"] for p in _panels() for t in p["targets"]]
    assert len(queries) >= 10
    for query in queries:
        unknown = set(re.findall(r"\bautoscaler_[a-z_]+", query)) - exported
        assert not unknown, f"{query}: unknown metrics {unknown}"
    with EmbeddedPrometheus(tmp_path / "prometheus", scrape_interval_s=1.0) as prometheus:
        for query in queries:
            expanded = query
            for variable, value in EXPANSIONS.items():
                expanded = expanded.replace(variable, value)
            answer = httpx.get(f"{prometheus.url}/api/v1/query", params={"query": expanded}, timeout=10)
            assert answer.status_code == 200, f"{expanded}: {answer.text}"
