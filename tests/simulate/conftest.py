"""Shared helpers for the dry-run tests: fixture traces, scenario files written into ``tmp_path``,
the Typer app with ``dry-run`` registered, and a real Prometheus whose history was backfilled with
``promtool tsdb create-blocks-from openmetrics`` before it started.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from ruamel.yaml import YAML

from autoscaler.embedded import EmbeddedPrometheus
from autoscaler.simulate.commands import register
from autoscaler.testing.embedded_fixtures import require_binary
from sim_helpers import BASE_SCENARIO, backfill, merged

@pytest.fixture
def write_scenario(tmp_path: Path) -> Callable[..., Path]:
    """``write_scenario(name="s.yaml", **changes)``: BASE_SCENARIO with changes, written as YAML."""
    def write(name: str = "scenario.yaml", **changes: Any) -> Path:
        path = tmp_path / name
        with path.open("w", encoding="utf-8") as handle:
            YAML(typ="safe", pure=True).dump(merged(BASE_SCENARIO, changes), handle)
        return path
    return write


@pytest.fixture
def cli_app() -> typer.Typer:
    """A Typer app with only ``dry-run`` registered, as the main CLI registers it."""
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test app."""

    register(app)
    return app


@pytest.fixture
def backfilled_prometheus(tmp_path: Path) -> Iterator[Callable[[str], EmbeddedPrometheus]]:
    """``start(openmetrics)``: backfill a TSDB with that history, then start a real Prometheus on it."""
    require_binary("prometheus")
    started: list[EmbeddedPrometheus] = []

    def start(openmetrics: str) -> EmbeddedPrometheus:
        root = tmp_path / f"prometheus-{len(started)}"
        prometheus = EmbeddedPrometheus(root, scrape_interval_s=5.0)
        backfill(openmetrics, prometheus.data_dir)
        started.append(prometheus)
        return prometheus.start()

    yield start
    for prometheus in started:
        prometheus.stop()
        shutil.rmtree(prometheus.root, ignore_errors=True)
