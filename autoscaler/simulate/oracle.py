"""The oracle: the cheapest fleet schedule that never lets demand exceed ready capacity, knowing the future.

Required nodes per second are ``r(t) = max(min_nodes, ceil(demand(t) / C))``. The schedule
decomposes by levels: the k-th node must be ready in every second with ``r(t) ≥ k``. Between two
busy spells of a level, an idle gap ``g`` costs ``min(g, boot)``: keep the node running through a
short gap, or terminate it and launch a new one ``boot`` seconds before the next spell (billed
while it boots). Before a level's first spell the cost is ``min(start, boot)`` (nodes ready at the
window's start were launched before it); after its last spell, nothing. The total is
``Σ r(t)`` plus those gap and lead costs, summed over levels.

**With a warm pool** (``warm_start_s`` given) a gap has a third option: stop the node and start it
again ``warm_start_s`` before the next spell, billed at the stopped price (``stopped_ratio`` of the
running price) while stopped. The gap then costs ``min(g, boot, w + ratio × (g − w))`` in running
node-seconds, so the warm oracle is a lower bound for any fleet that may start stopped instances
(preparing the warm instances is not charged, which keeps it a bound). Without ``warm_start_s`` it
is the cold oracle above.

It is computed from the crossing events of ``r`` (each change of ``r`` by d is d events, one per
level crossed), sorted by level and time, so the work is ``O(V log V)`` in the total variation of
``r``, whatever the peak, and vectorised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Oracle:
    """The oracle's bill and shape: node-seconds, the peak it runs, and how many nodes it launches."""

    node_seconds: int
    peak_nodes: int
    launches: int
    stopped_seconds: int = 0
    warm_starts: int = 0

    def cost(self, price_per_hour: float, stopped_price_per_hour: float) -> float:
        """Running node-hours at ``price_per_hour`` plus stopped hours at ``stopped_price_per_hour``."""
        return (self.node_seconds * price_per_hour + self.stopped_seconds * stopped_price_per_hour) / 3600.0


def _segmented_arange(lengths: NDArray[np.int64]) -> NDArray[np.int64]:
    """``[0..l0-1, 0..l1-1, ...]`` without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    heads = np.cumsum(lengths) - lengths
    out: NDArray[np.int64] = np.arange(total, dtype=np.int64) - np.repeat(heads, lengths)
    return out


def oracle(
    required: NDArray[np.int64], boot_s: int, warm_start_s: int | None = None, stopped_ratio: float = 0.0
) -> Oracle:
    """The oracle for required nodes per second ``required`` and a boot delay of ``boot_s`` seconds;
    with ``warm_start_s``, stopped nodes may be started again in that time (see the module docstring)."""
    r = np.asarray(required, dtype=np.int64)
    if r.size == 0:
        return Oracle(node_seconds=0, peak_nodes=0, launches=0)
    busy = int(r.sum())
    change = np.flatnonzero(np.diff(r)) + 1  # seconds where r differs from the second before
    before = r[change - 1]
    after = r[change]
    up = after > before
    # Each change crosses |after - before| levels: up-crossings start a busy spell at levels
    # before+1..after, down-crossings end one at levels after+1..before.
    low = np.minimum(before, after)
    lengths = np.abs(after - before)
    levels = np.repeat(low, lengths) + 1 + _segmented_arange(lengths)
    times = np.repeat(change, lengths)
    starts = np.repeat(up, lengths)
    order = np.lexsort((times, levels))
    levels, times, starts = levels[order], times[order], starts[order]
    # A gap: a spell ends at a level and the next event at that level starts one.
    same = levels[1:] == levels[:-1]
    gap = same & ~starts[:-1] & starts[1:]
    gaps = times[1:][gap] - times[:-1][gap]
    cold_or_run = np.minimum(gaps, boot_s)
    stopped = 0
    warm_starts = 0
    if warm_start_s is not None:
        w = warm_start_s
        warm_cost = np.where(gaps > w, w + stopped_ratio * (gaps - w), np.inf)
        use_warm = warm_cost < cold_or_run
        warm_starts = int(np.count_nonzero(use_warm))
        stopped = int((gaps[use_warm] - w).sum())
        gap_cost = np.where(use_warm, w, cold_or_run).sum()
    else:
        use_warm = np.zeros(len(gaps), dtype=bool)
        gap_cost = cold_or_run.sum()
    # A lead: a level's first event starts a spell (the level was idle at t = 0).
    first = np.ones(len(levels), dtype=bool)
    first[1:] = ~same
    lead = first & starts
    lead_limit = boot_s if warm_start_s is None else min(boot_s, warm_start_s)
    lead_cost = np.minimum(times[lead], lead_limit).sum()
    launches = int(np.count_nonzero((gaps >= boot_s) & ~use_warm)) if len(levels) > 1 else 0
    if warm_start_s is None:
        launches += int(np.count_nonzero(lead & (times >= boot_s)))
    else:
        warm_starts += int(np.count_nonzero(lead & (times >= lead_limit)))
    return Oracle(
        node_seconds=busy + int(gap_cost) + int(lead_cost),
        peak_nodes=int(r.max()),
        launches=launches,
        stopped_seconds=stopped,
        warm_starts=warm_starts,
    )
