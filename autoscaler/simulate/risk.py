"""Risk in users' terms: which requests waited, how long, how deep the queue got, what drains cut.

The replay records, per second, ``unmet(s) = max(0, demand(s) − capacity(s))``: streams that wanted
service and had no slot. It does not follow single requests, so their waits are rebuilt from that
curve with a first-in, first-out queue: each rise of ``unmet`` by one is a request starting to wait
(a new arrival without a slot, or one displaced when capacity fell), each fall by one the longest
waiting request getting a slot. The i-th request to wait therefore waits from the second of the i-th
rise to the second of the i-th fall (or to the window's end when it never got one, counted as
``still_waiting``). The waits sum to the unmet stream-seconds exactly, so these figures and the
summary's agree. Everything is vectorised (``np.repeat`` over the rises and falls): milliseconds
for 14 days, after the replay, so the replay loop itself is not slowed.

Figures are grouped per calendar day and per hour of day in the policy's schedule time zone (UTC
when it has none), by the second a request started waiting; drain cuts by the tick the drain
started.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

from autoscaler.simulate.fleet import Replay

_DAY = 86_400
_HOUR = 3_600


@dataclass(frozen=True)
class Waits:
    """When each request that waited started waiting and how long it waited (seconds, sorted by start)."""

    starts: NDArray[np.int64]
    waits: NDArray[np.int64]
    #: Requests that still had no slot when the window ended (their wait is cut at the end).
    still_waiting: int


@dataclass(frozen=True)
class RiskRow:
    """The risk figures of one span of the window (a day, an hour of day, or the whole window)."""

    label: str
    requests_waited: int
    wait_p95_s: float
    wait_max_s: int
    queue_max: int
    violation_seconds: int
    unmet_stream_seconds: int
    drain_cuts: int


@dataclass(frozen=True)
class Risk:
    """One run's risk: the whole window, per day and per hour of day, and its worst day and hour."""

    timezone: str
    total: RiskRow
    days: tuple[RiskRow, ...]
    hours: tuple[RiskRow, ...]
    #: Seconds from the window's start at which the worst day and the worst hour begin (and their
    #: lengths; a partial first or last day is shorter). The worst is the one with the most unmet
    #: stream-seconds; the first day or hour when nothing waited.
    worst_day: tuple[int, int]
    worst_hour: tuple[int, int]
    worst_day_label: str
    worst_hour_label: str
    still_waiting: int


def fifo_waits(unmet: NDArray[np.int64]) -> Waits:
    """The waits of a first-in, first-out queue whose length per second is ``unmet`` (see the module)."""
    length = len(unmet)
    if length == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Waits(empty, empty, 0)
    previous = np.concatenate(([0], unmet[:-1]))
    step = unmet - previous
    seconds = np.arange(length, dtype=np.int64)
    starts = np.repeat(seconds, np.maximum(step, 0))
    ends = np.repeat(seconds, np.maximum(-step, 0))
    still = len(starts) - len(ends)
    if still:
        ends = np.concatenate((ends, np.full(still, length, dtype=np.int64)))
    waits: NDArray[np.int64] = (ends - starts).astype(np.int64)
    return Waits(starts=starts, waits=waits, still_waiting=int(still))


def _row(label: str, waits: NDArray[np.int64], unmet: NDArray[np.int64], cuts: int) -> RiskRow:
    return RiskRow(
        label=label,
        requests_waited=len(waits),
        wait_p95_s=float(np.percentile(waits, 95)) if len(waits) else 0.0,
        wait_max_s=int(waits.max()) if len(waits) else 0,
        queue_max=int(unmet.max()) if len(unmet) else 0,
        violation_seconds=int(np.count_nonzero(unmet)),
        unmet_stream_seconds=int(unmet.sum()),
        drain_cuts=cuts,
    )


def _second_cuts(replay: Replay, length: int) -> NDArray[np.int64]:
    """Drain cuts placed at the second their drain started (the tick's start)."""
    out = np.zeros(length, dtype=np.int64)
    cuts = replay.tick_cuts
    if len(cuts):
        where = np.flatnonzero(cuts)
        out[np.minimum(replay.tick_times[where], length - 1)] += cuts[where]
    return out


def assess(replay: Replay, start: datetime, timezone: str = "UTC") -> Risk:
    """The risk figures of ``replay`` whose window starts at ``start`` (see the module docstring)."""
    unmet = replay.unmet
    length = len(unmet)
    zone = ZoneInfo(timezone)
    local = start.astimezone(zone)
    waits = fifo_waits(unmet)
    cuts = _second_cuts(replay, length)
    total = _row("whole window", waits.waits, unmet, int(cuts.sum()))

    # Calendar days: the first ends at the first local midnight.
    into_day = local.hour * _HOUR + local.minute * 60 + local.second
    first = min(length, (_DAY - into_day) % _DAY or _DAY)
    bounds = [0, *range(first, length, _DAY), length]
    bounds = sorted(set(bounds))
    days: list[RiskRow] = []
    for lo, hi in itertools.pairwise(bounds):
        i, j = np.searchsorted(waits.starts, [lo, hi])
        label = (start + timedelta(seconds=lo)).astimezone(zone).strftime("%a %d %b")
        if hi - lo < _DAY:
            label += f" ({(hi - lo) / _HOUR:.1f} h)"
        days.append(_row(label, waits.waits[i:j], unmet[lo:hi], int(cuts[lo:hi].sum())))

    # Hours of day: every second's local hour (whole-hour offsets assumed, as cron floors are).
    hour_of = ((np.arange(length, dtype=np.int64) + into_day) // _HOUR) % 24
    start_hour = hour_of[waits.starts] if len(waits.starts) else np.zeros(0, dtype=np.int64)
    hours: list[RiskRow] = []
    for h in range(24):
        mask = hour_of == h
        hours.append(_row(f"{h:02d}:00", waits.waits[start_hour == h], unmet[mask], int(cuts[mask].sum())))

    # Worst day and hour (absolute, not hour of day) by unmet stream-seconds.
    sums = [r.unmet_stream_seconds for r in days]
    worst = int(np.argmax(sums)) if sums else 0
    worst_day = (bounds[worst], bounds[worst + 1] - bounds[worst]) if len(bounds) > 1 else (0, 0)
    hour_first = min(length, (_HOUR - into_day % _HOUR) % _HOUR or _HOUR)
    hour_bounds = sorted({0, *range(hour_first, length, _HOUR), length})
    per_hour = np.add.reduceat(unmet, hour_bounds[:-1]) if length else np.zeros(0, dtype=np.int64)
    hi_index = int(np.argmax(per_hour)) if len(per_hour) else 0
    worst_hour = (
        (hour_bounds[hi_index], hour_bounds[hi_index + 1] - hour_bounds[hi_index]) if length else (0, 0)
    )
    hour_start = (start + timedelta(seconds=worst_hour[0])).astimezone(zone)
    return Risk(
        timezone=timezone,
        total=total,
        days=tuple(days),
        hours=tuple(hours),
        worst_day=worst_day,
        worst_hour=worst_hour,
        worst_day_label=days[worst].label if days else "",
        worst_hour_label=f"{hour_start:%a %d %b %H:%M}",
        still_waiting=waits.still_waiting,
    )


def risk_summary(risk: Risk) -> dict[str, object]:
    """``summary.json``'s ``risk``: the whole window's figures, the worst day and hour, and per day."""

    def row(r: RiskRow) -> dict[str, object]:
        return {
            "requests_waited": r.requests_waited,
            "wait_p95_s": round(r.wait_p95_s, 1),
            "wait_max_s": r.wait_max_s,
            "queue_max": r.queue_max,
            "violation_seconds": r.violation_seconds,
            "unmet_stream_seconds": r.unmet_stream_seconds,
            "drain_cuts": r.drain_cuts,
        }

    return {
        **row(risk.total),
        "still_waiting_at_end": risk.still_waiting,
        "timezone": risk.timezone,
        "worst_day": risk.worst_day_label,
        "worst_hour": risk.worst_hour_label,
        "per_day": [{"day": d.label, **row(d)} for d in risk.days],
    }
