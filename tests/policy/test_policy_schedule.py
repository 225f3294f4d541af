"""Scheduled capacity windows: cron in an IANA zone, durations across midnight, DST, lead, dates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from autoscaler.policy.model import ScheduledCapacity
from autoscaler.policy.schedule import fires_on, is_open


def _schedule(**kw: Any) -> ScheduledCapacity:
    return ScheduledCapacity.model_validate({"name": "s", "min_nodes": 1, **kw})


def _utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        pytest.param(_utc(2025, 3, 7, 14, 0), True, id="friday-est-0900"),  # 09:00 EST = 14:00 UTC
        pytest.param(_utc(2025, 3, 7, 13, 59), False, id="friday-before"),
        pytest.param(_utc(2025, 3, 10, 13, 0), True, id="monday-edt-0900"),  # DST: 09:00 EDT = 13:00 UTC
        pytest.param(_utc(2025, 3, 10, 15, 59), True, id="monday-edt-last-minute"),
        pytest.param(_utc(2025, 3, 10, 16, 0), False, id="monday-edt-closed"),
    ],
)
def test_cron_follows_time_zone_across_dst(at: datetime, expected: bool) -> None:
    """A 09:00 window in America/New_York opens at 14:00 UTC in winter and 13:00 UTC in summer."""
    schedule = _schedule(timezone="America/New_York", cron="0 9 * * 1-5", duration="3h")
    assert is_open(schedule, at) is expected


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        pytest.param(_utc(2025, 3, 3, 23, 30), True, id="before-midnight"),
        pytest.param(_utc(2025, 3, 4, 1, 59), True, id="after-midnight"),
        pytest.param(_utc(2025, 3, 4, 2, 0), False, id="closed"),
    ],
)
def test_window_spans_midnight(at: datetime, expected: bool) -> None:
    """A 22:00 + 4 h window stays open past midnight into the next day."""
    assert is_open(_schedule(cron="0 22 * * *", duration="4h"), at) is expected


def test_multi_day_window() -> None:
    """A window opened Monday 00:00 for 5 days covers the working week and closes for the weekend."""
    schedule = _schedule(timezone="Asia/Shanghai", cron="0 0 * * 1", duration="5d")
    monday = datetime(2025, 3, 2, 16, 0, tzinfo=UTC)  # Monday 00:00 in Shanghai
    assert all(is_open(schedule, monday + timedelta(hours=h)) for h in range(0, 5 * 24, 5))
    assert not is_open(schedule, monday + timedelta(days=5))
    assert not is_open(schedule, monday - timedelta(seconds=1))


def test_lead_crosses_day_boundary() -> None:
    """A floor's lead reaches back into the previous local day."""
    schedule = _schedule(cron="0 0 * * 2", duration="1h")  # Tuesdays 00:00 UTC
    assert is_open(schedule, _utc(2025, 3, 3, 23, 40), lead=timedelta(minutes=30))
    assert not is_open(schedule, _utc(2025, 3, 3, 23, 40))


def test_cron_with_dates_needs_fire_on_a_listed_date() -> None:
    """With dates, a window counts only when it opens on a listed date, even if it runs past it."""
    schedule = _schedule(cron="0 20 * * *", duration="8h",
                         dates=[{"start": "2025-06-01", "end": "2025-06-01"}])
    assert is_open(schedule, _utc(2025, 6, 2, 3, 0))  # opened 06-01 20:00, still open
    assert not is_open(schedule, _utc(2025, 6, 2, 21, 0))  # opened 06-02: not a listed date
    assert not is_open(schedule, _utc(2025, 5, 31, 21, 0))


def test_fire_times_are_cached_per_day() -> None:
    """Fire times are computed once per (cron, zone, day), so the hot loop builds no croniter."""
    schedule = _schedule(cron="*/10 * * * *", duration="5m", timezone="Europe/Dublin")
    fires_on.cache_clear()
    for minute in range(0, 24 * 60, 7):
        is_open(schedule, _utc(2025, 7, 1) + timedelta(minutes=minute))
    info = fires_on.cache_info()
    assert info.misses <= 3  # the day itself and its neighbours
    assert info.hits > 100
    assert len(fires_on("*/10 * * * *", "Europe/Dublin", datetime(2025, 7, 1).date())) == 144
