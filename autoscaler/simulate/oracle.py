"""The oracle: the cheapest fleet schedule that never lets demand exceed ready capacity, knowing the future.

Required nodes per second are ``r(t) = max(min_nodes, ceil(demand(t) / C))``. The schedule
decomposes by levels: the k-th node must be ready in every second with ``r(t) ≥ k``. Between two
busy spells of a level, an idle gap ``g`` costs ``min(g, boot)``: keep the node running through a
short gap, or terminate it and launch a new one ``boot`` seconds before the next spell (billed
while it boots). Before a level's first spell the cost is ``min(start, boot)`` (nodes ready at the
window's start were launched before it); after its last spell, nothing. The total is
``Σ r(t)`` plus those gap and lead costs, summed over levels.

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


def _segmented_arange(lengths: NDArray[np.int64]) -> NDArray[np.int64]:
    """``[0..l0-1, 0..l1-1, ...]`` without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    heads = np.cumsum(lengths) - lengths
    out: NDArray[np.int64] = np.arange(total, dtype=np.int64) - np.repeat(heads, lengths)
    return out


def oracle(required: NDArray[np.int64], boot_s: int) -> Oracle:
    """The oracle for required nodes per second ``required`` and a boot delay of ``boot_s`` seconds."""
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
    gap_cost = np.minimum(times[1:][gap] - times[:-1][gap], boot_s).sum()
    # A lead: a level's first event starts a spell (the level was idle at t = 0).
    first = np.ones(len(levels), dtype=bool)
    first[1:] = ~same
    lead = first & starts
    lead_cost = np.minimum(times[lead], boot_s).sum()
    launches = int(np.count_nonzero(gap & (times[1:] - times[:-1] >= boot_s)) if len(levels) > 1 else 0)
    launches += int(np.count_nonzero(lead & (times >= boot_s)))
    return Oracle(
        node_seconds=busy + int(gap_cost) + int(lead_cost), peak_nodes=int(r.max()), launches=launches
    )
