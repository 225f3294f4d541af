"""FakeMetricsSource beyond the contract: recorded calls, injected answers and errors, ranges, reset."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from autoscaler.errors import MetricsUnavailable
from autoscaler.metrics.fake import FakeMetricsSource, QueryCall

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def test_queries_are_recorded_in_order() -> None:
    """Every call is recorded with its method, PromQL, instant and label."""
    fake = FakeMetricsSource()
    fake.query("a", now=NOW)
    fake.query_by_instance("b", now=NOW, label="gpu")
    assert fake.calls == [QueryCall("query", "a", NOW), QueryCall("query_by_instance", "b", NOW, "gpu")]
    assert fake.queries == ["a", "b"]


def test_unset_query_is_missing() -> None:
    """A query nothing was set for returns a missing sample naming the query."""
    sample = FakeMetricsSource().query("max(x)", now=NOW)
    assert sample.value is None and sample.error and "max(x)" in sample.error


def test_set_missing_passes_the_reason_through() -> None:
    """``set_missing`` answers with exactly that reason (and nothing by instance)."""
    fake = FakeMetricsSource()
    fake.set_missing("q", "prometheus down")
    assert fake.query("q", now=NOW).error == "prometheus down"
    assert fake.query_by_instance("q", now=NOW) == {}


def test_set_raises_raises_on_every_call() -> None:
    """``set_raises`` makes each query of that PromQL raise the given exception."""
    fake = FakeMetricsSource()
    fake.set_raises("q", MetricsUnavailable("boom"))
    for _ in range(2):
        with pytest.raises(MetricsUnavailable, match="boom"):
            fake.query("q", now=NOW)


def test_set_value_replaces_earlier_answers() -> None:
    """A later ``set`` replaces a missing or raising answer; the observed time defaults to ``now``."""
    fake = FakeMetricsSource()
    fake.set_raises("q", RuntimeError("x"))
    fake.set("q", 3.0)
    sample = fake.query("q", now=NOW)
    assert (sample.value, sample.observed_at) == (3.0, NOW)


def test_staleness_is_measured_from_the_query_instant() -> None:
    """A series observed longer ago than ``staleness`` before ``now`` is stale; younger is data."""
    fake = FakeMetricsSource(staleness=timedelta(seconds=30))
    fake.set("q", 1.0, observed_at=NOW - timedelta(seconds=30))
    assert fake.query("q", now=NOW).value == 1.0
    sample = fake.query("q", now=NOW + timedelta(seconds=1))
    assert sample.value is None and sample.error and "stale" in sample.error


def test_query_range_is_clipped_to_the_window() -> None:
    """``query_range`` returns the set points inside [start, end], and records the call."""
    fake = FakeMetricsSource()
    t0 = NOW.timestamp()
    fake.set_range("demand", [(t0 + 20, 3.0), (t0, 1.0), (t0 + 10, 2.0), (t0 + 30, 4.0)])
    points = fake.query_range("demand", NOW, NOW + timedelta(seconds=20), timedelta(seconds=10))
    assert points == [(t0, 1.0), (t0 + 10, 2.0), (t0 + 20, 3.0)]
    assert fake.calls[-1].method == "query_range"


def test_reset_forgets_everything() -> None:
    """``reset`` drops answers, ranges and recorded calls."""
    fake = FakeMetricsSource()
    fake.set("q", 1.0)
    fake.set_range("q", [(NOW.timestamp(), 1.0)])
    fake.query("q", now=NOW)
    fake.reset()
    assert fake.calls == []
    assert fake.query("q", now=NOW).value is None
    assert fake.query_range("q", NOW - timedelta(1), NOW + timedelta(1), timedelta(seconds=1)) == []
