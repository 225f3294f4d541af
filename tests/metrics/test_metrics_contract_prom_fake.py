"""The MetricsSource contract run against a real Prometheus (scraping a real exporter) and the fake."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from autoscaler.embedded import EmbeddedPrometheus
from autoscaler.metrics.fake import FakeMetricsSource
from autoscaler.metrics.prometheus import PrometheusSource
from autoscaler.testing.embedded_fixtures import StaticExporter, wait_for_series
from autoscaler.testing.metrics_contract import MetricsContract, Publish


@pytest.mark.integration
class TestPrometheusSourceContract(MetricsContract):
    """PrometheusSource against the embedded Prometheus; series come from a scraped exporter."""

    @pytest.fixture
    def metrics_source(self, shared_source: PrometheusSource) -> PrometheusSource:
        """The source pointed at the module's Prometheus (60 s staleness)."""
        return shared_source

    @pytest.fixture
    def publish(self, shared_exporter: StaticExporter, shared_prometheus: EmbeddedPrometheus) -> Publish:
        """Expose the series on the exporter (old ones with an explicit sample time) and wait for a scrape."""
        counts: dict[str, set[tuple[tuple[str, str], ...]]] = {}

        def publish(name: str, series: Sequence[tuple[Mapping[str, str], float]], age_s: float | None) -> str:
            stamp = None if age_s is None else time.time() - age_s
            for labels, value in series:
                shared_exporter.set(name, value, labels, timestamp=stamp)
                counts.setdefault(name, set()).add(tuple(sorted(labels.items())))
            expected = len(counts[name])
            wait_for_series(shared_prometheus.url, name, timeout_s=20.0,
                            predicate=lambda result: len(result) == expected)
            return name

        return publish


class TestFakeMetricsSourceContract(MetricsContract):
    """FakeMetricsSource; published series are set on the fake with their observation time."""

    @pytest.fixture
    def metrics_source(self) -> FakeMetricsSource:
        """A fake with the real source's default 60 s staleness."""
        return FakeMetricsSource(staleness=timedelta(seconds=60))

    @pytest.fixture
    def publish(self, metrics_source: FakeMetricsSource) -> Publish:
        """Add the series to what the fake answers for the gauge's name, observed ``age_s`` ago."""

        def publish(name: str, series: Sequence[tuple[Mapping[str, str], float]], age_s: float | None) -> str:
            at = datetime.now(UTC) - timedelta(seconds=age_s or 0.0)
            for labels, value in series:
                metrics_source.add_series(name, labels, value, observed_at=at)
            return name

        return publish
