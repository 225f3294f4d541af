"""PrometheusSource against a real Prometheus: file_sd discovery, fast failure when Prometheus is
down or hangs, PromQL errors and result shapes, and range queries.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from autoscaler.embedded import EmbeddedPrometheus
from autoscaler.errors import MetricsUnavailable
from autoscaler.metrics.file_sd import write_targets
from autoscaler.metrics.prometheus import PrometheusSource
from autoscaler.policy.model import PrometheusConfig
from autoscaler.testing import wait_until
from autoscaler.testing.embedded_fixtures import StaticExporter, wait_for_series
from autoscaler.testing.metrics_contract import gauge_name

pytestmark = pytest.mark.integration


def now() -> datetime:
    """The wall clock, as the controller's clock gives it."""
    return datetime.now(UTC)


@pytest.fixture
def hanging_server() -> Iterator[str]:
    """A URL whose server accepts connections (the kernel backlog) but never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def publish(prometheus: EmbeddedPrometheus, exporter: StaticExporter, name: str, value: float,
            labels: dict[str, str] | None = None) -> None:
    """Expose ``name`` on the exporter and wait until Prometheus has scraped it."""
    exporter.set(name, value, labels)
    wait_for_series(prometheus.url, name)


# ------------------------------------------------------------------------------------- discovery
def test_file_sd_targets_come_and_go(
    embedded_prometheus: EmbeddedPrometheus, start_exporter: Callable[[], StaticExporter],
    make_source: Callable[..., PrometheusSource],
) -> None:
    """Nodes in the file_sd file are scraped with their labels; a node removed from it stops reporting."""
    first, second = start_exporter(), start_exporter()
    for exporter, value in ((first, 3.0), (second, 8.0)):
        exporter.set("asr_active_streams", value)
    source = make_source(embedded_prometheus)
    query = "asr_active_streams"

    write_targets(embedded_prometheus.targets_file, [first.instance("node-1", instance_type="g5.xlarge")])
    wait_until(lambda: source.query_by_instance(query, now=now()) == {"node-1": 3.0}, timeout_s=20.0,
               message="the first node is scraped")
    series = wait_for_series(embedded_prometheus.url, query)
    target_labels = {"pool": "asr-test", "instance_id": "node-1", "instance_type": "g5.xlarge",
                     "model_version": "test-model"}
    assert target_labels.items() <= series[0]["metric"].items()

    write_targets(embedded_prometheus.targets_file, [first.instance("node-1"), second.instance("node-2")])
    wait_until(lambda: source.query_by_instance(query, now=now()) == {"node-1": 3.0, "node-2": 8.0},
               timeout_s=20.0, message="the second node is scraped")
    assert source.query(query, now=now()).value == 8.0

    write_targets(embedded_prometheus.targets_file, [first.instance("node-1")])
    wait_until(lambda: source.query_by_instance(query, now=now()) == {"node-1": 3.0}, timeout_s=20.0,
               message="the removed node stops reporting")


# ------------------------------------------------------------------------------------- failures
def test_stopped_prometheus_gives_missing_quickly(
    embedded_prometheus: EmbeddedPrometheus, make_source: Callable[..., PrometheusSource]
) -> None:
    """With Prometheus stopped, query returns a missing sample within a few seconds instead of hanging."""
    source = make_source(embedded_prometheus, timeout_s=1.0)
    assert source.query("vector(1)", now=now()).value == 1.0
    embedded_prometheus.stop()

    started = time.monotonic()
    sample = source.query("vector(1)", now=now())
    by_instance = source.query_by_instance("up", now=now())
    assert time.monotonic() - started < 5.0
    assert sample.value is None
    assert sample.error and "query failed" in sample.error
    assert by_instance == {}
    with pytest.raises(MetricsUnavailable) as caught:
        source.query_range("vector(1)", now() - timedelta(minutes=1), now(), timedelta(seconds=15))
    assert caught.value.__cause__ is not None


def test_hanging_server_costs_one_timeout_not_a_retry_storm(hanging_server: str) -> None:
    """A server that never answers costs about one timeout per query: the client's retries are off."""
    source = PrometheusSource(PrometheusConfig(url=hanging_server, timeout=timedelta(seconds=1)))
    started = time.monotonic()
    sample = source.query("up", now=now())
    elapsed = time.monotonic() - started
    assert sample.value is None
    assert sample.error and "timed out" in sample.error.lower()
    # prometheus-api-client's default policy (3 retries, backoff factor 1) would take over 4 s.
    assert 0.9 <= elapsed < 2.5

    started = time.monotonic()
    with pytest.raises(MetricsUnavailable, match=r"(?i)timed out"):
        source.query_range("up", now() - timedelta(minutes=1), now(), timedelta(seconds=15))
    assert time.monotonic() - started < 2.5
    source.close()


def test_promql_error_is_missing_with_prometheus_message(shared_source: PrometheusSource) -> None:
    """A PromQL syntax error returns a missing sample that carries Prometheus's parse error."""
    sample = shared_source.query("sum(rate(", now=now())
    assert sample.value is None
    assert sample.error and "parse error" in sample.error
    assert shared_source.query_by_instance("sum(rate(", now=now()) == {}


def test_range_vector_query_is_missing(shared_source: PrometheusSource) -> None:
    """A bare range selector (a matrix) is no data, with a hint to wrap it in a function."""
    sample = shared_source.query("up[1m]", now=now())
    assert sample.value is None
    assert sample.error and "range vector" in sample.error


# ------------------------------------------------------------------------------------- shapes
def test_scalar_result_is_a_value(shared_source: PrometheusSource) -> None:
    """A scalar expression returns its value."""
    assert shared_source.query("scalar(vector(2)) * 3", now=now()).value == 6.0


def test_computed_nan_is_missing(shared_source: PrometheusSource) -> None:
    """An expression Prometheus evaluates to NaN (0/0) is no data."""
    sample = shared_source.query("vector(0) / 0", now=now())
    assert sample.value is None and sample.error and "NaN" in sample.error


def test_plain_selector_reports_its_scrape_time(
    shared_source: PrometheusSource, shared_prometheus: EmbeddedPrometheus, shared_exporter: StaticExporter
) -> None:
    """A plain selector's sample is dated by its scrape, not by the query instant."""
    name = gauge_name("scraped")
    publish(shared_prometheus, shared_exporter, name, 1.0)
    asked = now()
    sample = shared_source.query(name, now=asked)
    assert sample.observed_at is not None
    assert timedelta(0) <= asked - sample.observed_at <= timedelta(seconds=5)


def test_aggregate_of_fresh_series_is_data(
    shared_source: PrometheusSource, shared_prometheus: EmbeddedPrometheus, shared_exporter: StaticExporter
) -> None:
    """An aggregation is checked for freshness by Prometheus's lookback only and returns its value."""
    name = gauge_name("summed")
    shared_exporter.set(name, 2.0, {"instance_id": "a"})
    shared_exporter.set(name, 5.0, {"instance_id": "b"})
    wait_for_series(shared_prometheus.url, name, predicate=lambda result: len(result) == 2)
    assert shared_source.query(f"sum({name})", now=now()).value == 7.0
    assert shared_source.query(f"sum by (instance_id) ({name})  # per node", now=now()).value == 5.0


def test_naive_datetime_is_refused(shared_source: PrometheusSource) -> None:
    """A naive ``now`` is a programming error (ValueError), not a data problem."""
    with pytest.raises(ValueError, match="timezone"):
        shared_source.query("up", now=datetime.now())  # a naive datetime is the point of this test


# ------------------------------------------------------------------------------------- ranges
def test_query_range_returns_points_reduced_to_the_maximum(
    shared_source: PrometheusSource, shared_prometheus: EmbeddedPrometheus, shared_exporter: StaticExporter
) -> None:
    """query_range returns time-ordered (timestamp, value) points, the maximum across series at each step."""
    name = gauge_name("ranged")
    shared_exporter.set(name, 4.0, {"instance_id": "a"})
    shared_exporter.set(name, 6.0, {"instance_id": "b"})
    # Three scrapes of both series, so whole-second steps of the last seconds all find a sample.
    wait_for_series(shared_prometheus.url, f"count_over_time({name}[1m]) >= 3",
                    predicate=lambda result: len(result) == 2)
    end = now()
    points = shared_source.query_range(name, end - timedelta(seconds=10), end, timedelta(seconds=1))
    assert points, "no points in the window"
    assert [t for t, _ in points] == sorted(t for t, _ in points)
    assert {v for _, v in points} == {6.0}
    assert all(math.isfinite(t) and end.timestamp() - 11 <= t <= end.timestamp() + 1 for t, _ in points)


def test_query_range_of_nothing_is_empty(shared_source: PrometheusSource) -> None:
    """A range query matching nothing returns no points (no data), not an error."""
    end = now()
    assert shared_source.query_range(gauge_name("absent"), end - timedelta(minutes=5), end,
                                     timedelta(seconds=15)) == []


def test_query_range_error_raises_metrics_unavailable(shared_source: PrometheusSource) -> None:
    """A range query Prometheus rejects raises MetricsUnavailable carrying its message."""
    end = now()
    with pytest.raises(MetricsUnavailable, match="parse error"):
        shared_source.query_range("sum(", end - timedelta(minutes=5), end, timedelta(seconds=15))
