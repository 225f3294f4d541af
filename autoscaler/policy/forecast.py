"""The seasonal forecast behind the predictive floor: pure, from the pool's own demand history.

``seasonal_forecast`` takes (time, demand) samples strictly before ``now`` and predicts demand for
each ``step`` of the next ``horizon``:

1. History is cut into ``step``-long buckets aligned to UTC midnight; a bucket keeps the *largest*
   sample in it (``aggregate="max"``: capacity has to cover the peak of a bucket) or their mean
   (``"mean"``: an estimate of the offered load, for a sizing rule that adds its own headroom). NaN,
   infinite and negative samples are dropped; buckets with no sample are gaps, never zero.
2. **Time of day.** For a future bucket, the median of the same bucket on each earlier day (up to
   14): one odd day (an outage, a holiday) does not move a median.
3. **Day of week.** With a week or more of history, the same bucket 7 (and 14) days earlier is
   averaged in with equal weight, so a Monday forecast leans on Mondays.
4. Fewer than ``min_history`` of history, or no sample for a bucket on any earlier day: no
   forecast for it (``None``), and the caller acts on nothing.

The same function serves the live controller (history from one Prometheus range query per refresh)
and the dry-run (history from the replayed past only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
from numpy.typing import ArrayLike

_DAY_S = 86400
_WEEK_S = 7 * _DAY_S


@dataclass(frozen=True)
class Forecast:
    """Predicted demand per bucket from ``start`` on, or why there is none (``problem``)."""

    made_at: datetime
    step_s: int
    start: datetime
    values: tuple[float | None, ...] = ()
    history_s: float = 0.0
    problem: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def usable(self) -> bool:
        """True when the forecast has at least one predicted bucket."""
        return self.problem is None and any(v is not None for v in self.values)

    def peak(self, start: datetime, end: datetime) -> float | None:
        """The largest predicted demand over the buckets that overlap ``[start, end]``."""
        if not self.values:
            return None
        first = math.floor((start - self.start).total_seconds() / self.step_s)
        last = math.floor((end - self.start).total_seconds() / self.step_s)
        window = [v for v in self.values[max(0, first): max(0, last + 1)] if v is not None]
        return max(window) if window else None


def seasonal_forecast(
    times: ArrayLike,
    values: ArrayLike,
    *,
    now: datetime,
    step: timedelta,
    horizon: timedelta,
    history: timedelta = timedelta(days=14),
    min_history: timedelta = timedelta(days=1),
    aggregate: str = "max",
) -> Forecast:
    """Forecast demand for ``[now, now + horizon)`` from samples at epoch seconds ``times`` before ``now``.

    Samples at or after ``now`` are never read (a forecast that saw the future would look perfect in a
    dry-run and fail live).
    """
    step_s = int(step.total_seconds())
    now_s = now.timestamp()
    oldest = now_s - history.total_seconds()
    t = np.asarray(times, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if t.shape != v.shape:
        raise ValueError("times and values differ in length")
    window = (t >= oldest) & (t < now_s)
    t, v = t[window], v[window]
    usable = np.isfinite(v) & (v >= 0)
    dropped = int(np.count_nonzero(~usable))
    t, v = t[usable], v[usable]
    buckets: dict[int, float] = {}
    first_seen: float | None = None
    if t.size:
        order = np.argsort(t, kind="stable")
        t, v = t[order], v[order]
        keys = (t // step_s).astype(np.int64)
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        if aggregate == "mean":
            sizes = np.diff(np.r_[starts, len(v)])
            levels = np.add.reduceat(v, starts) / sizes
        else:
            levels = np.maximum.reduceat(v, starts)
        buckets = dict(zip(keys[starts].tolist(), levels.tolist(), strict=True))
        first_seen = float(t[0])
    start_key = int(now_s // step_s)
    start = datetime.fromtimestamp(start_key * step_s, tz=UTC)
    notes = (f"{dropped} samples dropped (NaN, infinite or negative)",) if dropped else ()
    span = now_s - first_seen if first_seen is not None else 0.0
    if span < min_history.total_seconds():
        hours = span / 3600
        return Forecast(made_at=now, step_s=step_s, start=start, history_s=span, notes=notes,
                        problem=f"{hours:.1f} h of history; the forecast needs at least "
                                f"{min_history.total_seconds() / 3600:g} h before it acts")
    per_day = _DAY_S // step_s
    per_week = _WEEK_S // step_s
    days = int(history.total_seconds() // _DAY_S)
    predicted: list[float | None] = []
    for offset in range(int(horizon.total_seconds() // step_s) + 1):
        key = start_key + offset
        daily = sorted(buckets[k] for d in range(1, days + 1) if (k := key - d * per_day) in buckets)
        if not daily:
            predicted.append(None)
            continue
        middle = len(daily) // 2
        level: float = daily[middle] if len(daily) % 2 else (daily[middle - 1] + daily[middle]) / 2
        weekly = [buckets[k] for w in (1, 2) if (k := key - w * per_week) in buckets]
        if weekly:
            level = (level + sum(weekly) / len(weekly)) / 2
        predicted.append(level)
    return Forecast(made_at=now, step_s=step_s, start=start, values=tuple(predicted), history_s=span,
                    notes=notes)
