"""The live forecast: the pool's demand history read once per refresh, and the forecast kept between ticks.

``ForecastCache.current(policy, now)`` is what the controller calls every tick. It returns the
forecast in force and refreshes it at most every ``scaling.forecast.refresh`` (and at once when the
forecast section or its query changes, or the clock went back behind the forecast):

1. **One range query per refresh.** The history is ``max_over_time((<query>)[<step>:])``
   (``avg_over_time`` with ``aggregate: mean``; a subquery at the server's evaluation interval)
   evaluated once per ``step`` over the finished steps of the last ``history``
   (``HistorySource.query_range``, i.e. prometheus-api-client's ``custom_query_range`` with the
   source's fail-fast timeout and no retries). Each evaluation is
   1 ms before a step's end, so its point is the peak (mean) of that whole step and nothing of the
   next one, and is filed under the step's start: a bucket's value, as in the dry-run, where
   ``seasonal_forecast`` keeps the largest (mean) tick sample of a bucket. ``<query>`` is
   ``forecast.query`` or the check's own query. Prometheus answers at most 11,000 points per query;
   only a longer window (a 1-minute step over more than 7.6 days) is split into consecutive
   queries.
2. **Only the past.** The window ends before ``now``; ``seasonal_forecast`` drops anything at or
   after ``now`` besides. NaN and ±Inf points are left out by the source (gaps), and negative ones
   by the forecaster.
3. **Failures are reasons, not crashes.** A history source that is missing, unreachable, slow or
   answers an error, an empty window, or less than ``min_history`` of data gives a ``Forecast``
   whose ``problem`` says why; the engine then records "no forecast floor: <problem>" and acts on
   nothing (a forecast never removes a node anyway). A failed refresh keeps an earlier forecast
   while its horizon still covers ``now``, with a note, and is retried at the next refresh.

The dry-run does not use this module: ``simulate.fleet._Forecaster`` feeds the same
``seasonal_forecast`` from the replayed past only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import structlog

from autoscaler.errors import MetricsUnavailable
from autoscaler.policy.forecast import Forecast, seasonal_forecast
from autoscaler.policy.model import ForecastConfig, PoolPolicy
from autoscaler.protocols import HistorySource

log = structlog.get_logger("autoscaler.history")

#: Prometheus refuses a range query of more points than this per series.
MAX_POINTS_PER_QUERY = 11_000
#: How long before a step's end its peak is evaluated (a sample on the boundary opens the next step).
_BEFORE_END_S = 0.001


def forecast_query(policy: PoolPolicy) -> str | None:
    """The PromQL whose history the forecast learns: ``forecast.query`` or its check's query."""
    config = policy.scaling.forecast
    if config is None:
        return None
    if config.query:
        return config.query
    return next(c.query for c in policy.scaling.checks if c.name == config.check)


def history_promql(query: str, step: timedelta, aggregate: str = "max") -> str:
    """``query``'s peak (or mean) over each ``step`` (a subquery): the value each history point carries."""
    function = "avg_over_time" if aggregate == "mean" else "max_over_time"
    return f"{function}(({query.strip()})[{int(step.total_seconds())}s:])"


@dataclass(frozen=True)
class History:
    """Demand points read for one refresh: epoch seconds (bucket starts), values, and how many queries."""

    times: np.ndarray[Any, np.dtype[np.float64]]
    values: np.ndarray[Any, np.dtype[np.float64]]
    queries: int


def read_history(source: HistorySource, query: str, config: ForecastConfig, now: datetime) -> History:
    """Each ``config.step``'s peak of ``query`` over ``config.history`` before ``now``.

    One ``query_range`` call unless the window holds more than ``MAX_POINTS_PER_QUERY`` steps.
    Raises ``MetricsUnavailable`` (chained) when the source cannot answer.
    """
    step_s = int(config.step.total_seconds())
    now_s = now.timestamp()
    # Steps (by their start): the first whole one inside the window to the last one finished by now.
    first = math.ceil((now_s - config.history.total_seconds()) / step_s) * step_s
    last = math.floor(now_s / step_s) * step_s - step_s
    promql = history_promql(query, config.step, config.aggregate)
    points: list[tuple[float, float]] = []
    queries = 0
    start = first
    while start <= last:
        end = min(last, start + (MAX_POINTS_PER_QUERY - 1) * step_s)
        points += source.query_range(promql, _instant(start + step_s - _BEFORE_END_S),
                                     _instant(end + step_s - _BEFORE_END_S), config.step)
        queries += 1
        start = end + step_s
    # Each point back to the start of the step it closes (rounded: the instants carry milliseconds).
    ends = np.fromiter((t for t, _ in points), dtype=np.float64, count=len(points))
    times = np.round((ends + _BEFORE_END_S) / step_s) * step_s - step_s
    values = np.fromiter((v for _, v in points), dtype=np.float64, count=len(points))
    return History(times=times, values=values, queries=queries)


def _instant(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def live_forecast(source: HistorySource | None, policy: PoolPolicy, now: datetime) -> tuple[Forecast, int]:
    """The pool's forecast at ``now`` from ``source``'s history, and the range queries it took.

    Never raises for a history problem: the returned forecast's ``problem`` says what went wrong.
    """
    config = policy.scaling.forecast
    query = forecast_query(policy)
    assert config is not None and query is not None, "the policy has no forecast section"
    step_s = int(config.step.total_seconds())
    start = datetime.fromtimestamp(math.floor(now.timestamp() / step_s) * step_s, UTC)

    def failed(problem: str) -> Forecast:
        return Forecast(made_at=now, step_s=step_s, start=start, problem=problem)

    if source is None:
        return failed("no history source: this controller has no Prometheus to read history from"), 0
    try:
        history = read_history(source, query, config, now)
    except MetricsUnavailable as exc:
        return failed(f"history unavailable: {exc}"), 1
    except Exception as exc:  # a source breaking its contract must not stop scaling
        log.exception("forecast_history_crashed", pool=policy.pool)
        return failed(f"history unavailable: unexpected {type(exc).__name__}: {exc}"), 1
    days = config.history.total_seconds() / 86400
    if not history.times.size:
        return failed(f"no history: {query!r} has no data in the last {days:g} days"), history.queries
    forecast = seasonal_forecast(history.times, history.values, now=now, step=config.step,
                                 horizon=config.horizon, history=config.history,
                                 min_history=config.min_history, aggregate=config.aggregate)
    gaps = _gaps(history.times, step_s, now)
    kind = "means" if config.aggregate == "mean" else "peaks"
    note = (f"history: {history.times.size} points of {step_s}s {kind} from {history.queries} range "
            f"{'query' if history.queries == 1 else 'queries'}")
    if gaps:
        note += f", {gaps} steps without data"
    return replace(forecast, notes=(*forecast.notes, note)), history.queries


def _gaps(times: np.ndarray[Any, np.dtype[np.float64]], step_s: int, now: datetime) -> int:
    """Steps between the first point and ``now`` that have no point."""
    if not times.size:
        return 0
    expected = int((math.floor(now.timestamp() / step_s) * step_s - times.min()) // step_s)
    return max(0, expected - int(np.unique(times).size))


@dataclass(frozen=True)
class ForecastState:
    """The forecast in force for one pool, and whether this call read the history."""

    forecast: Forecast
    config: ForecastConfig
    query: str
    refreshed: bool
    next_refresh: datetime
    queries: int = 0

    def describe(self) -> list[str]:
        """A few lines for ``autoscaler explain``: where the forecast came from and when it is re-read."""
        f = self.forecast
        lines = [f"forecast ({self.config.mode}): made at {f.made_at.isoformat(timespec='seconds')} from "
                 f"{f.history_s / 3600:.1f} h of the history of {self.query}; next refresh at "
                 f"{self.next_refresh.isoformat(timespec='seconds')}"]
        if f.problem:
            lines.append(f"  problem: {f.problem}")
        lines += [f"  note: {note}" for note in f.notes]
        return lines

    def record(self) -> dict[str, Any]:
        """JSON-ready form for the tick's inputs; the predicted values only on the tick that refreshed."""
        f = self.forecast
        out: dict[str, Any] = {
            "mode": self.config.mode,
            "query": self.query,
            "made_at": f.made_at.isoformat(),
            "refreshed": self.refreshed,
            "next_refresh": self.next_refresh.isoformat(),
            "history_s": round(f.history_s, 1),
            "problem": f.problem,
            "notes": list(f.notes),
        }
        if self.refreshed:
            out |= {"range_queries": self.queries, "start": f.start.isoformat(), "step_s": f.step_s,
                    "values": [None if v is None else round(v, 3) for v in f.values]}
        return out


class ForecastCache:
    """The forecast of each pool, refreshed from ``source`` at most every ``forecast.refresh``."""

    def __init__(self, source: HistorySource | None) -> None:
        self.source = source
        self._states: dict[str, ForecastState] = {}

    def current(self, policy: PoolPolicy, now: datetime) -> ForecastState | None:
        """The forecast in force at ``now`` (reading history only when a refresh is due), or None
        when the policy has no forecast section."""
        config = policy.scaling.forecast
        query = forecast_query(policy)
        if config is None or query is None:
            self._states.pop(policy.pool, None)
            return None
        held = self._states.get(policy.pool)
        if (held is not None and held.config == config and held.query == query
                and held.forecast.made_at <= now < held.next_refresh):
            state = replace(held, refreshed=False, queries=0)
            self._states[policy.pool] = state
            return state
        forecast, queries = live_forecast(self.source, policy, now)
        if not forecast.usable and held is not None and held.forecast.usable and _covers(held.forecast, now):
            forecast = replace(held.forecast, notes=(
                *held.forecast.notes,
                f"refresh at {now.isoformat(timespec='seconds')} failed ({forecast.problem}); "
                f"keeping the forecast made at {held.forecast.made_at.isoformat(timespec='seconds')}",
            ))
        state = ForecastState(forecast=forecast, config=config, query=query, refreshed=True,
                              next_refresh=now + config.refresh, queries=queries)
        self._states[policy.pool] = state
        log.info("forecast_refreshed", pool=policy.pool, usable=forecast.usable, problem=forecast.problem,
                 history_s=round(forecast.history_s), range_queries=queries)
        return state


def _covers(forecast: Forecast, now: datetime) -> bool:
    """True while ``now`` is inside the forecast's horizon."""
    end = forecast.start + timedelta(seconds=forecast.step_s * len(forecast.values))
    return forecast.made_at <= now < end
