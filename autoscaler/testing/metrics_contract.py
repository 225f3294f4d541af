"""The behaviour every ``MetricsSource`` implementation must show, as a pytest suite to subclass.

Usage, in a test module::

    class TestMySourceContract(MetricsContract):
        @pytest.fixture
        def metrics_source(self) -> MySource: ...

        @pytest.fixture
        def publish(self) -> Publish: ...

``publish(name, series, age_s)`` adds ``series`` (a list of ``(labels, value)``, replacing series
with the same labels) to the gauge ``name``, observed ``age_s`` seconds ago (``None``: just now),
waits until the source can see every series of the gauge, and returns the PromQL that reads it
(normally ``name`` itself). Each test publishes a
gauge with a fresh name. Sources are queried at the wall clock's ``now``; ``stale_age_s`` must be
older than the source's staleness bound.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import ClassVar

import pytest

from autoscaler.protocols import MetricsSource

#: ``publish(name, [(labels, value), ...], age_s) -> promql``
Publish = Callable[[str, Sequence[tuple[Mapping[str, str], float]], float | None], str]


def gauge_name(prefix: str = "contract") -> str:
    """A metric name no other test uses."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


class MetricsContract:
    """Subclass with ``metrics_source`` and ``publish`` fixtures; see the module docstring."""

    #: Age of a sample that the source must treat as stale.
    stale_age_s: ClassVar[float] = 150.0

    def now(self) -> datetime:
        """The instant queries are asked for."""
        return datetime.now(UTC)

    def test_implements_the_metrics_source_protocol(self, metrics_source: MetricsSource) -> None:
        """The implementation is a ``MetricsSource``."""
        assert isinstance(metrics_source, MetricsSource)

    def test_single_series_value_is_returned(self, metrics_source: MetricsSource, publish: Publish) -> None:
        """A query matching one series returns its value, with the time it was observed."""
        promql = publish(gauge_name(), [({"instance_id": "n1"}, 4.5)], None)
        sample = metrics_source.query(promql, now=self.now())
        assert sample.has_data, sample.error
        assert sample.value == 4.5
        assert sample.error is None
        assert sample.observed_at is not None

    def test_several_series_reduce_to_the_maximum(
        self, metrics_source: MetricsSource, publish: Publish
    ) -> None:
        """A query matching several series returns the largest value."""
        promql = publish(gauge_name(), [({"instance_id": "n1"}, 2.0), ({"instance_id": "n2"}, 9.0),
                                        ({"instance_id": "n3"}, -1.0)], None)
        assert metrics_source.query(promql, now=self.now()).value == 9.0

    def test_zero_is_data(self, metrics_source: MetricsSource, publish: Publish) -> None:
        """A series whose value is 0 is data (0), not missing."""
        promql = publish(gauge_name(), [({"instance_id": "n1"}, 0.0)], None)
        sample = metrics_source.query(promql, now=self.now())
        assert sample.has_data and sample.value == 0.0

    def test_unknown_metric_is_missing(self, metrics_source: MetricsSource) -> None:
        """A query that matches nothing returns a missing sample with a reason, never zero."""
        sample = metrics_source.query(gauge_name("never_published"), now=self.now())
        assert sample.value is None
        assert not sample.has_data
        assert sample.error

    @pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
    def test_non_finite_value_is_missing(
        self, metrics_source: MetricsSource, publish: Publish, bad: float
    ) -> None:
        """A NaN or infinite value is no data, with a reason."""
        promql = publish(gauge_name(), [({"instance_id": "n1"}, bad)], None)
        sample = metrics_source.query(promql, now=self.now())
        assert sample.value is None
        assert sample.error

    def test_non_finite_series_are_left_out_of_the_maximum(
        self, metrics_source: MetricsSource, publish: Publish
    ) -> None:
        """Among several series, NaN and Inf ones are ignored and the finite maximum is returned."""
        promql = publish(gauge_name(), [({"instance_id": "n1"}, math.nan), ({"instance_id": "n2"}, 3.0),
                                        ({"instance_id": "n3"}, math.inf)], None)
        assert metrics_source.query(promql, now=self.now()).value == 3.0

    def test_stale_sample_is_missing(self, metrics_source: MetricsSource, publish: Publish) -> None:
        """A sample older than the staleness bound is no data, and the reason says it is stale."""
        promql = publish(gauge_name(), [({"instance_id": "n1"}, 5.0)], self.stale_age_s)
        sample = metrics_source.query(promql, now=self.now())
        assert sample.value is None
        assert sample.error and "stale" in sample.error

    def test_stale_series_are_left_out(self, metrics_source: MetricsSource, publish: Publish) -> None:
        """A stale series does not count toward the maximum; the fresh ones do."""
        name = gauge_name()
        publish(name, [({"instance_id": "old"}, 50.0)], self.stale_age_s)
        promql = publish(name, [({"instance_id": "new"}, 2.0)], None)
        assert metrics_source.query(promql, now=self.now()).value == 2.0

    def test_query_by_instance_maps_each_label_value(
        self, metrics_source: MetricsSource, publish: Publish
    ) -> None:
        """Each series' instance_id maps to its value; series without the label or with NaN are left out."""
        promql = publish(gauge_name(), [({"instance_id": "n1"}, 1.0), ({"instance_id": "n2"}, 7.0),
                                        ({"instance_id": "n3"}, math.nan), ({"other": "x"}, 5.0)], None)
        assert dict(metrics_source.query_by_instance(promql, now=self.now())) == {"n1": 1.0, "n2": 7.0}

    def test_query_by_instance_with_another_label(
        self, metrics_source: MetricsSource, publish: Publish
    ) -> None:
        """The grouping label can be chosen; several series with one label value keep the largest."""
        promql = publish(gauge_name(), [({"gpu": "0", "instance_id": "n1"}, 1.0),
                                        ({"gpu": "1", "instance_id": "n1"}, 6.0)], None)
        by_gpu = metrics_source.query_by_instance(promql, now=self.now(), label="gpu")
        assert dict(by_gpu) == {"0": 1.0, "1": 6.0}
        assert dict(metrics_source.query_by_instance(promql, now=self.now())) == {"n1": 6.0}

    def test_query_by_instance_of_nothing_is_empty(self, metrics_source: MetricsSource) -> None:
        """A by-instance query that matches nothing returns an empty mapping."""
        assert dict(metrics_source.query_by_instance(gauge_name("never_published"), now=self.now())) == {}
