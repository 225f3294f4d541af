"""The wall clock every real adapter uses unless a test or the simulator injects its own."""

from __future__ import annotations

from datetime import UTC, datetime


class SystemClock:
    """``Clock`` reading the wall clock, in UTC."""

    def now(self) -> datetime:
        """Now, timezone-aware."""
        return datetime.now(UTC)
