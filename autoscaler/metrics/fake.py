"""An in-memory ``MetricsSource`` answering from values a test sets, recording every query.

Each PromQL string is answered from what was set for exactly that string:

- ``set(promql, value)``, ``set_series(promql, [(labels, value), ...])`` or ``add_series``:
  series, reduced the way ``PrometheusSource`` reduces them (NaN/±Inf and stale series dropped,
  maximum of the rest);
- ``set_missing(promql, reason)``: a missing sample with that reason;
- ``set_raises(promql, exc)``: the query raises ``exc`` (for testing callers against a source that
  breaks the contract);
- nothing set: a missing sample ("no value set").

``query_range`` answers from ``set_range``/``add_range_series``: each series' points are what its
expression evaluates to at those instants; at each instant ``start + k × step`` the finite values of
the series with a point there are reduced to their maximum, as ``PrometheusSource`` reduces them.

Series may carry the time they were observed (``observed_at``); one older than ``staleness`` at
the query's ``now`` counts as no data, as in the real source.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from autoscaler.domain import Sample
from autoscaler.metrics.reduce import max_by_label

#: Float slack when matching a point to an instant (sub-millisecond: Prometheus keeps milliseconds).
_INSTANT_SLACK_S = 1e-4


@dataclass(frozen=True)
class FakeSeries:
    """One series a fake query returns: its labels, value and (optionally) when it was observed."""

    labels: Mapping[str, str]
    value: float
    observed_at: datetime | None = None


@dataclass(frozen=True)
class QueryCall:
    """One recorded call: which method, the PromQL, and the ``now`` it was asked for."""

    method: str
    promql: str
    now: datetime
    label: str | None = None


@dataclass
class _Answer:
    series: list[FakeSeries] = field(default_factory=list)
    missing: str | None = None
    raises: BaseException | None = None


class FakeMetricsSource:
    """A ``MetricsSource`` whose answers are set per PromQL string; see the module docstring."""

    def __init__(self, *, staleness: timedelta = timedelta(seconds=60)) -> None:
        self.staleness = staleness
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget every answer, range and recorded query."""
        with self._lock:
            self._answers: dict[str, _Answer] = {}
            self._ranges: dict[str, dict[frozenset[tuple[str, str]], list[tuple[float, float]]]] = {}
            #: Every ``query``/``query_by_instance``/``query_range`` call, in order.
            self.calls: list[QueryCall] = []

    # ----------------------------------------------------------------------------------- setters
    def set(self, promql: str, value: float, *, observed_at: datetime | None = None) -> None:
        """Answer ``promql`` with one unlabelled series of ``value``."""
        self.set_series(promql, [({}, value)], observed_at=observed_at)

    def set_series(
        self,
        promql: str,
        series: Iterable[tuple[Mapping[str, str], float]],
        *,
        observed_at: datetime | None = None,
    ) -> None:
        """Answer ``promql`` with these ``(labels, value)`` series, all observed at ``observed_at``."""
        with self._lock:
            self._answers[promql] = _Answer(
                series=[FakeSeries(dict(labels), float(value), observed_at) for labels, value in series]
            )

    def add_series(
        self, promql: str, labels: Mapping[str, str], value: float, *, observed_at: datetime | None = None
    ) -> None:
        """Add one series to what ``promql`` answers (replacing a series with the same labels)."""
        with self._lock:
            answer = self._answers.get(promql)
            if answer is None or answer.missing is not None or answer.raises is not None:
                answer = self._answers[promql] = _Answer()
            answer.series = [s for s in answer.series if dict(s.labels) != dict(labels)]
            answer.series.append(FakeSeries(dict(labels), float(value), observed_at))

    def set_missing(self, promql: str, reason: str) -> None:
        """Answer ``promql`` with ``Sample.missing(reason)`` (and an empty mapping by instance)."""
        with self._lock:
            self._answers[promql] = _Answer(missing=reason)

    def set_raises(self, promql: str, exc: BaseException) -> None:
        """Make every query of ``promql`` raise ``exc``."""
        with self._lock:
            self._answers[promql] = _Answer(raises=exc)

    def set_range(self, promql: str, points: Iterable[tuple[float, float]]) -> None:
        """Answer ``query_range(promql, ...)`` with one series of these ``(unix seconds, value)`` points
        (replacing every series set before, and an earlier ``set_raises`` of ``promql``)."""
        with self._lock:
            self._ranges[promql] = {}
        self.add_range_series(promql, {}, points)

    def add_range_series(
        self, promql: str, labels: Mapping[str, str], points: Iterable[tuple[float, float]]
    ) -> None:
        """Add one series of points to what ``query_range(promql, ...)`` answers (replacing a series
        with the same labels); the series are reduced as ``PrometheusSource`` reduces them."""
        with self._lock:
            series = self._ranges.setdefault(promql, {})
            series[frozenset(labels.items())] = sorted((float(t), float(v)) for t, v in points)
            answer = self._answers.get(promql)
            if answer is not None and answer.raises is not None:
                del self._answers[promql]

    @property
    def queries(self) -> list[str]:
        """The PromQL of every recorded call, in order."""
        return [c.promql for c in self.calls]

    # ----------------------------------------------------------------------------------- protocol
    def query(self, promql: str, *, now: datetime) -> Sample:
        """The maximum of the fresh, finite series set for ``promql``, or a missing sample."""
        answer = self._answer(QueryCall("query", promql, now))
        if isinstance(answer, str):
            return Sample.missing(answer)
        best = max(answer, key=lambda s: s.value)
        return Sample(value=best.value, observed_at=best.observed_at or now)

    def query_by_instance(
        self, promql: str, *, now: datetime, label: str = "instance_id"
    ) -> Mapping[str, float]:
        """``label`` value → the largest fresh, finite value among the series set for ``promql``."""
        answer = self._answer(QueryCall("query_by_instance", promql, now, label))
        if isinstance(answer, str):
            return {}
        return max_by_label(answer, label)

    def query_range(
        self, promql: str, start: datetime, end: datetime, step: timedelta
    ) -> list[tuple[float, float]]:
        """The series set with ``set_range``/``add_range_series``, evaluated as Prometheus does.

        At each instant ``start + k × step`` up to ``end``, the series with a point at that instant
        (to a tenth of a millisecond) give their values; non-finite ones are left out and the maximum
        of the rest is the instant's point (no point when none is left). Raises what ``set_raises``
        set for ``promql``; an unset range is empty.
        """
        with self._lock:
            self.calls.append(QueryCall("query_range", promql, end))
            answer = self._answers.get(promql)
            series = [list(points) for points in self._ranges.get(promql, {}).values()]
        if answer is not None and answer.raises is not None:
            raise answer.raises
        lo, hi, every = start.timestamp(), end.timestamp(), step.total_seconds()
        if every <= 0:
            raise ValueError("step must be positive")
        times = [[t for t, _ in points] for points in series]
        out: list[tuple[float, float]] = []
        for k in range(int((hi - lo + _INSTANT_SLACK_S) // every) + 1):
            instant = lo + k * every
            values = []
            for points, stamps in zip(series, times, strict=True):
                index = bisect.bisect_left(stamps, instant - _INSTANT_SLACK_S)
                if (index < len(stamps) and stamps[index] <= instant + _INSTANT_SLACK_S
                        and math.isfinite(points[index][1])):
                    values.append(points[index][1])
            if values:
                out.append((instant, max(values)))
        return out

    # ----------------------------------------------------------------------------------- internals
    def _answer(self, call: QueryCall) -> list[FakeSeries] | str:
        """The usable series for a call, or the reason there are none."""
        with self._lock:
            self.calls.append(call)
            answer = self._answers.get(call.promql)
        if answer is None:
            return f"no value set for {call.promql!r} in the fake"
        if answer.raises is not None:
            raise answer.raises
        if answer.missing is not None:
            return answer.missing
        if not answer.series:
            return f"no data: {call.promql!r} returned an empty result"
        finite = [s for s in answer.series if math.isfinite(s.value)]
        if not finite:
            return f"no data: {call.promql!r} returned only NaN/Inf"
        fresh = [s for s in finite if s.observed_at is None or call.now - s.observed_at <= self.staleness]
        if not fresh:
            return f"stale: every series of {call.promql!r} is older than {self.staleness.total_seconds():g}s"
        return fresh
