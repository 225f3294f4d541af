"""Fixtures for metrics tests: real Prometheus servers (from the shared embedded fixtures) scraping
StaticExporters, and PrometheusSources pointed at them.

Prometheus applies a target-file change to its scrapers at most every 5 s, so tests that only read
share one server and one scraped exporter per module (``shared_prometheus``, ``shared_exporter``;
each test uses gauge names of its own). Tests that stop or reconfigure Prometheus take the
function-scoped ``embedded_prometheus``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest

from autoscaler.embedded import EmbeddedPrometheus
from autoscaler.metrics.file_sd import write_target_groups
from autoscaler.metrics.prometheus import PrometheusSource
from autoscaler.testing.embedded_fixtures import (  # noqa: F401 - pytest finds fixtures by name
    StaticExporter,
    embedded_prometheus,
    require_binary,
    start_exporter,
    wait_for_series,
)

#: The target label of a scraped exporter. It carries no instance_id, so the labels a test sets
#: on its series are kept as they are.
EXPORTER_LABELS = {"exporter": "static"}


def scrape(prometheus: EmbeddedPrometheus, *exporters: StaticExporter) -> None:
    """Make ``prometheus`` scrape exactly ``exporters`` and wait until each one's `up` is 1."""
    write_target_groups(prometheus.targets_file,
                        [{"targets": [f"127.0.0.1:{e.port}" for e in exporters], "labels": EXPORTER_LABELS}])
    wait_for_series(prometheus.url, 'up{exporter="static"} == 1', timeout_s=20.0,
                    predicate=lambda result: len(result) == len(exporters))


def source_for(prometheus: EmbeddedPrometheus, timeout_s: float = 2.0) -> PrometheusSource:
    """A PrometheusSource for ``prometheus`` with ``timeout_s`` and 60 s staleness."""
    return PrometheusSource(prometheus.source_config(timeout=timedelta(seconds=timeout_s),
                                                     staleness=timedelta(seconds=60)))


@pytest.fixture
def make_source() -> Iterator[Callable[..., PrometheusSource]]:
    """Build PrometheusSources with ``source_for``'s arguments; all are closed after the test."""
    made: list[PrometheusSource] = []

    def make(prometheus: EmbeddedPrometheus, timeout_s: float = 2.0) -> PrometheusSource:
        source = source_for(prometheus, timeout_s)
        made.append(source)
        return source

    yield make
    for source in made:
        source.close()


@pytest.fixture(scope="module")
def shared_exporter() -> Iterator[StaticExporter]:
    """One StaticExporter for the module's tests."""
    exporter = StaticExporter()
    yield exporter
    exporter.stop()


@pytest.fixture(scope="module")
def shared_prometheus(
    tmp_path_factory: pytest.TempPathFactory, shared_exporter: StaticExporter
) -> Iterator[EmbeddedPrometheus]:
    """One Prometheus (1 s scrapes) for the module's tests, already scraping ``shared_exporter``."""
    require_binary("prometheus")
    with EmbeddedPrometheus(tmp_path_factory.mktemp("prometheus"), scrape_interval_s=1.0) as prometheus:
        scrape(prometheus, shared_exporter)
        yield prometheus


@pytest.fixture
def shared_source(shared_prometheus: EmbeddedPrometheus) -> Iterator[PrometheusSource]:
    """A PrometheusSource on ``shared_prometheus``: 2 s timeout, 60 s staleness."""
    source = source_for(shared_prometheus)
    yield source
    source.close()
