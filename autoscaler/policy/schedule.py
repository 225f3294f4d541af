"""When a scheduled capacity window is open, computed fast enough for the dry-run's hot loop.

A cron window opens at each fire time of ``cron`` (in the schedule's IANA time zone) and lasts
``duration``. A window from ``dates`` alone runs from the first date's midnight to the midnight after
the last date. When both are given, a cron window counts only if it opens on one of the dates.

A floor is applied ``lead`` ahead of its window (so booted nodes are ready when it opens); a ceiling
applies exactly over its window. Fire times are computed once per (cron, zone, local day) and cached;
each call is a few bisections, with no croniter object built.
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from croniter import croniter

from autoscaler.policy.model import DateRange, ScheduledCapacity

_DAY = timedelta(days=1)


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    """The ``ZoneInfo`` of an IANA name (validated at load, so it exists)."""
    return ZoneInfo(name)


@lru_cache(maxsize=4096)
def fires_on(cron: str, zone_name: str, day: date) -> tuple[datetime, ...]:
    """Every fire time of ``cron`` on local ``day`` in ``zone_name``, as sorted UTC instants."""
    tz = zone(zone_name)
    start = datetime.combine(day, time(0), tzinfo=tz)
    end = datetime.combine(day + _DAY, time(0), tzinfo=tz)
    # croniter starts strictly after its start time, so begin one second before midnight.
    it = croniter(cron, start - timedelta(seconds=1))
    out: list[datetime] = []
    while True:
        fire: datetime = it.get_next(datetime)
        if fire >= end:
            break
        out.append(fire.astimezone(UTC))
    return tuple(out)


@lru_cache(maxsize=4096)
def _midnight(day: date, zone_name: str) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone(zone_name)).astimezone(UTC)


def _in_dates(day: date, dates: list[DateRange]) -> bool:
    return not dates or any(r.start <= day <= r.end for r in dates)


def is_open(schedule: ScheduledCapacity, now: datetime, lead: timedelta = timedelta(0)) -> bool:
    """True when ``schedule``'s window is open at ``now + lead`` or had opened by then and not yet closed.

    Formally: some window ``[open, close)`` satisfies ``open - lead <= now < close``.
    """
    if schedule.cron is None or schedule.duration is None:
        # A pure date-range window: midnight of each range's start to the midnight after its end.
        for r in schedule.dates:
            opens = _midnight(r.start, schedule.timezone) - lead
            closes = _midnight(r.end + _DAY, schedule.timezone)
            if opens <= now < closes:
                return True
        return False
    duration = schedule.duration
    # A window opening at f is open for now iff f - lead <= now < f + duration,
    # i.e. f lies in (now - duration, now + lead].
    low = now - duration
    high = now + lead
    tz = zone(schedule.timezone)
    day = low.astimezone(tz).date()
    last_day = high.astimezone(tz).date()
    while day <= last_day:
        if _in_dates(day, schedule.dates):
            fires = fires_on(schedule.cron, schedule.timezone, day)
            i = bisect_right(fires, low)
            if i < len(fires) and fires[i] <= high:
                return True
        day += _DAY
    return False

