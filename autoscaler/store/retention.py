"""Automatic retention: prune a pool's old records about once an hour, as its policy says.

``autoscaler run`` calls ``Retention.after_tick`` after each tick (never before or inside it), so a
year of 15 s ticks stays bounded by ``store.retention`` of the policy. ``autoscaler store prune``
does the same by hand.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from autoscaler.domain import PruneResult
from autoscaler.errors import StoreError
from autoscaler.protocols import Store

log = structlog.get_logger("autoscaler.retention")

#: How often one pool is pruned at most.
PRUNE_EVERY = timedelta(hours=1)


class Retention:
    """Prunes each pool at most once per ``every``; a failure is logged and retried next period."""

    def __init__(self, store: Store, every: timedelta = PRUNE_EVERY) -> None:
        self.store = store
        self.every = every
        self._last: dict[str, datetime] = {}

    def after_tick(self, pool: str, retention: timedelta | None, now: datetime) -> PruneResult | None:
        """Prune ``pool``'s records older than ``retention`` when the period has passed; None if not due."""
        if retention is None:
            return None
        last = self._last.get(pool)
        if last is not None and now - last < self.every:
            return None
        self._last[pool] = now
        try:
            result = self.store.prune(now - retention, pool=pool)
        except StoreError as exc:
            log.warning("prune_failed", pool=pool, error=str(exc))
            return None
        if result.ticks or result.instance_events:
            log.info(
                "pruned",
                pool=pool,
                ticks=result.ticks,
                instance_events=result.instance_events,
                older_than=(now - retention).isoformat(timespec="seconds"),
            )
        return result
