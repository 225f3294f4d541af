"""The behaviour every ``HistorySource`` implementation must show, as a pytest suite to subclass.

Usage, in a test module::

    class TestMyHistoryContract(HistoryContract):
        @pytest.fixture
        def history(self) -> tuple[MySource, datetime]: ...   # a source holding contract_series(base)

        @pytest.fixture
        def broken_history_source(self) -> MySource: ...       # one that cannot answer at all

The ``history`` fixture returns a source that holds the series of ``contract_series(base)`` (one
sample a minute for an hour from ``base``, a whole minute) and ``base``. ``contract_openmetrics``
writes the same series as OpenMetrics text, for ``promtool tsdb create-blocks-from openmetrics``.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import pytest

from autoscaler.errors import MetricsUnavailable
from autoscaler.protocols import HistorySource

#: Minutes of contract history.
MINUTES = 60
#: Minutes at which ``history_gappy`` is NaN.
NAN_MINUTES = range(10, 15)

#: ``(metric, labels, value at minute i)``, each sampled once a minute from ``base``.
Series = tuple[str, dict[str, str], list[float]]


def contract_series() -> list[Series]:
    """The history every implementation holds: two series of one metric, and one with NaN samples."""
    return [
        ("history_rising", {"node": "a"}, [float(i) for i in range(MINUTES)]),
        ("history_rising", {"node": "b"}, [7.0] * MINUTES),
        ("history_gappy", {}, [math.nan if i in NAN_MINUTES else 2.0 * i for i in range(MINUTES)]),
    ]


def contract_openmetrics(base: datetime) -> str:
    """``contract_series`` as OpenMetrics text with sample times from ``base``."""
    lines: list[str] = []
    for metric in sorted({name for name, _, _ in contract_series()}):
        lines.append(f"# TYPE {metric} gauge")
        for name, labels, values in contract_series():
            if name != metric:
                continue
            text = ",".join(f'{k}="{v}"' for k, v in labels.items())
            selector = f"{name}{{{text}}}" if text else name
            for i, value in enumerate(values):
                shown = "NaN" if math.isnan(value) else f"{value:g}"
                lines.append(f"{selector} {shown} {int(base.timestamp()) + 60 * i}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


class HistoryContract:
    """Subclass with ``history`` and ``broken_history_source`` fixtures; see the module docstring."""

    def test_implements_the_history_source_protocol(self, history: tuple[HistorySource, datetime]) -> None:
        """The implementation is a ``HistorySource``."""
        assert isinstance(history[0], HistorySource)

    def test_one_point_per_step_reduced_to_the_maximum(self, history: tuple[HistorySource, datetime]) -> None:
        """Every step of the window has a point, at its instant, the larger of the two series."""
        source, base = history
        start = base + timedelta(minutes=5)
        end = base + timedelta(minutes=15)
        points = source.query_range("history_rising", start, end, timedelta(minutes=1))
        assert points == [(start.timestamp() + 60 * k, max(5.0 + k, 7.0)) for k in range(11)]

    def test_a_coarser_step_gives_fewer_points(self, history: tuple[HistorySource, datetime]) -> None:
        """A 5-minute step over 20 minutes: five points, at the step's instants."""
        source, base = history
        points = source.query_range("max(history_rising)", base + timedelta(minutes=10),
                                    base + timedelta(minutes=30), timedelta(minutes=5))
        assert points == [(base.timestamp() + 60 * m, float(m)) for m in (10, 15, 20, 25, 30)]

    def test_nan_points_are_left_out(self, history: tuple[HistorySource, datetime]) -> None:
        """NaN samples leave steps without a point (a gap), never a zero."""
        source, base = history
        start, end = base + timedelta(minutes=5), base + timedelta(minutes=20)
        points = source.query_range("history_gappy", start, end, timedelta(minutes=1))
        minutes = [round((t - base.timestamp()) / 60) for t, _ in points]
        assert minutes == [m for m in range(5, 21) if m not in NAN_MINUTES]
        assert all(v == 2.0 * m for m, (_, v) in zip(minutes, points, strict=True))

    def test_a_window_without_data_is_empty(self, history: tuple[HistorySource, datetime]) -> None:
        """A window before the history began returns no points, not zeros."""
        source, base = history
        points = source.query_range("history_rising", base - timedelta(hours=3), base - timedelta(hours=2),
                                    timedelta(minutes=1))
        assert points == []

    def test_a_source_that_cannot_answer_raises_metrics_unavailable(
        self, broken_history_source: HistorySource
    ) -> None:
        """Any failure is ``MetricsUnavailable``, chained to its cause."""
        now = datetime.now().astimezone()
        with pytest.raises(MetricsUnavailable) as caught:
            broken_history_source.query_range("history_rising", now - timedelta(hours=1), now,
                                              timedelta(minutes=1))
        assert caught.value.__cause__ is not None
