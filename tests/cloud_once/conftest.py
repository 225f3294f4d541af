"""Fixtures of the cloud ``once`` tests: a real Prometheus fed light load, a real nginx, simulated nodes.

Each fixture stops what it started when the test ends (helpers are in ``cloud_once_support``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cloud_once_support import LowLoad, NodeFleet, serve_low_load

from autoscaler.embedded import EmbeddedNginx, EmbeddedPrometheus
from autoscaler.testing.embedded_fixtures import StaticExporter, require_binary


@pytest.fixture
def low_load_prometheus(tmp_path: Path) -> Iterator[Callable[[str], EmbeddedPrometheus]]:
    """``start(pool)``: a Prometheus (1 s scrapes) of an exporter reporting light load for ``pool``."""
    require_binary("prometheus")
    with contextlib.ExitStack() as stack:

        def start(pool: str) -> EmbeddedPrometheus:
            prometheus = stack.enter_context(
                EmbeddedPrometheus(tmp_path / "prometheus", scrape_interval_s=1.0)
            )
            exporter = StaticExporter()
            stack.callback(exporter.stop)
            load = LowLoad(exporter, pool).start()
            stack.callback(load.stop)
            serve_low_load(prometheus.targets_file, load)
            return prometheus

        yield start


@pytest.fixture
def start_nginx(tmp_path: Path) -> Iterator[Callable[[str], EmbeddedNginx]]:
    """``start(upstream)``: a real nginx in ``tmp_path/nginx`` whose upstream block is named ``upstream``."""
    require_binary("nginx")
    with contextlib.ExitStack() as stack:

        def start(upstream: str) -> EmbeddedNginx:
            return stack.enter_context(EmbeddedNginx(tmp_path / "nginx", upstream=upstream))

        yield start


@pytest.fixture
def node_fleet() -> Iterator[NodeFleet]:
    """Simulated nodes the test starts on instance addresses; all are stopped after the test."""
    fleet = NodeFleet()
    try:
        yield fleet
    finally:
        fleet.stop_all()
