"""The HistorySource contract against a real Prometheus (its TSDB backfilled with promtool) and the fake."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from autoscaler.embedded import EmbeddedPrometheus
from autoscaler.embedded._process import free_port
from autoscaler.errors import MetricsUnavailable
from autoscaler.metrics.fake import FakeMetricsSource
from autoscaler.metrics.prometheus import PrometheusSource
from autoscaler.policy.model import PrometheusConfig
from autoscaler.testing.embedded_fixtures import backfill, require_binary
from autoscaler.testing.history_contract import HistoryContract, contract_openmetrics, contract_series

#: Where the contract history starts: two hours ago, on a whole minute (inside a one-day retention).
BASE = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)


@pytest.fixture(scope="module")
def backfilled() -> Iterator[EmbeddedPrometheus]:
    """A Prometheus whose TSDB holds the contract history from BASE."""
    require_binary("prometheus")
    server = EmbeddedPrometheus(scrape_interval_s=15.0)
    backfill(contract_openmetrics(BASE), server.data_dir)
    with server:
        yield server


@pytest.mark.integration
class TestPrometheusHistoryContract(HistoryContract):
    """PrometheusSource.query_range against the backfilled Prometheus."""

    @pytest.fixture
    def history(self, backfilled: EmbeddedPrometheus) -> Iterator[tuple[PrometheusSource, datetime]]:
        """A source on the backfilled server, and BASE."""
        source = PrometheusSource(backfilled.source_config())
        yield source, BASE
        source.close()

    @pytest.fixture
    def broken_history_source(self) -> PrometheusSource:
        """A source pointed at a port nothing listens on."""
        config = PrometheusConfig(url=f"http://127.0.0.1:{free_port()}", timeout=timedelta(seconds=1))
        return PrometheusSource(config)


class TestFakeHistoryContract(HistoryContract):
    """FakeMetricsSource holding the contract series per PromQL string."""

    @pytest.fixture
    def history(self) -> tuple[FakeMetricsSource, datetime]:
        """A fake answering each contract query with its series."""
        fake = FakeMetricsSource()
        t0 = BASE.timestamp()
        rising: list[list[float]] = []
        for name, labels, values in contract_series():
            points = [(t0 + 60 * i, v) for i, v in enumerate(values)]
            fake.add_range_series(name, labels, points)
            if name == "history_rising":
                rising.append(values)
        peaks = [max(values) for values in zip(*rising, strict=True)]
        fake.set_range("max(history_rising)", [(t0 + 60 * i, v) for i, v in enumerate(peaks)])
        return fake, BASE

    @pytest.fixture
    def broken_history_source(self) -> FakeMetricsSource:
        """A fake whose range query fails as an unreachable server would."""
        fake = FakeMetricsSource()
        try:
            raise ConnectionRefusedError("connection refused")
        except ConnectionRefusedError as exc:
            error = MetricsUnavailable("range query failed: cannot connect")
            error.__cause__ = exc
        fake.set_raises("history_rising", error)
        return fake
