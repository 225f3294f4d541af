"""The oracle's level decomposition against an exhaustive search over every fleet schedule."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.simulate.oracle import oracle


def brute_force(required: Sequence[int], boot: int) -> int:
    """The cheapest fleet schedule by exhaustive dynamic programming over fleet states.

    A state is (serving nodes, remaining boot seconds of each booting node). Each second any
    serving or booting node may be terminated and any number launched; a launched node is billed
    while it boots and serves ``boot`` seconds later. Serving nodes must cover ``required`` every
    second. Nodes serving at t = 0 were launched before the window and are billed from 0.
    """
    top = max(required, default=0)
    horizon = len(required)

    @functools.cache
    def best(t: int, serving: int, booting: tuple[int, ...]) -> float:
        if t == horizon:
            return 0
        result = float("inf")
        distinct = sorted(set(booting))

        # Choose how many serving nodes to keep, which booting nodes to keep, and launches.
        def keep_options(index: int) -> list[tuple[int, ...]]:
            if index == len(distinct):
                return [()]
            value = distinct[index]
            count = booting.count(value)
            tails = keep_options(index + 1)
            return [(value,) * k + tail for k in range(count + 1) for tail in tails]

        for keep_serving in range(serving + 1):
            for kept in keep_options(0):
                for launch in range(top + 1):
                    now_serving = keep_serving + (launch if boot == 0 else 0)
                    now_booting = kept + ((boot,) * launch if boot > 0 else ())
                    if now_serving + len(now_booting) > top + 1:
                        continue
                    if now_serving < required[t]:
                        continue
                    cost = now_serving + len(now_booting)
                    after = [b - 1 for b in now_booting]
                    ready = sum(1 for b in after if b == 0)
                    nxt = tuple(sorted(b for b in after if b > 0))
                    result = min(result, cost + best(t + 1, now_serving + ready, nxt))
        return result

    return int(min(best(0, start, ()) for start in range(top + 1)))


def test_single_level_gap_shorter_than_boot_is_kept() -> None:
    """A one-second gap is cheaper to run through than to relaunch for a 3-second boot."""
    assert oracle(np.array([1, 1, 0, 1, 1]), boot_s=3).node_seconds == 5


def test_single_level_long_gap_is_relaunched() -> None:
    """A gap longer than the boot costs the boot: terminate, then launch boot seconds early."""
    assert oracle(np.array([1, 0, 0, 0, 0, 0, 1]), boot_s=2).node_seconds == 2 + 2


def test_first_spell_lead_costs_at_most_the_boot() -> None:
    """A level idle at the start pays min(start, boot) before its first spell."""
    assert oracle(np.array([0, 0, 0, 0, 2, 2]), boot_s=3).node_seconds == 2 * 2 + 2 * 3
    assert oracle(np.array([0, 2, 2]), boot_s=3).node_seconds == 2 * 2 + 2 * 1


def test_constant_floor_costs_exactly_its_node_seconds() -> None:
    """Required nodes that never change cost nodes × seconds, with no launch."""
    result = oracle(np.full(100, 5), boot_s=180)
    assert (result.node_seconds, result.peak_nodes, result.launches) == (500, 5, 0)


@settings(max_examples=120, deadline=None)
@given(
    required=st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=9),
    boot=st.integers(min_value=0, max_value=3),
)
def test_oracle_matches_exhaustive_search(required: list[int], boot: int) -> None:
    """On small inputs, the level decomposition equals the cheapest schedule found by exhaustive search."""
    assert oracle(np.array(required, dtype=np.int64), boot).node_seconds == brute_force(required, boot)


def test_warm_oracle_stops_through_long_gaps_and_stays_below_the_cold_one() -> None:
    """One node needed, then a 1000 s gap, then needed again: cold pays min(gap, boot) = 180 s of
    running, warm pays 30 s of start plus 970 s stopped; the warm bill is never above the cold one."""
    required = np.array([1] * 100 + [0] * 1000 + [1] * 100, dtype=np.int64)
    cold = oracle(required, 180)
    warm = oracle(required, 180, warm_start_s=30, stopped_ratio=0.02)
    assert cold.node_seconds == 200 + 180 and cold.launches == 1
    assert warm.node_seconds == 200 + 30 and warm.stopped_seconds == 970 and warm.warm_starts == 1
    assert warm.launches == 0
    assert warm.cost(1.0, 0.02) < cold.cost(1.0, 0.02)


def test_warm_oracle_keeps_a_node_running_through_a_short_gap() -> None:
    """A gap shorter than the warm start is cheapest run through, exactly as without a warm pool."""
    required = np.array([1] * 50 + [0] * 20 + [1] * 50, dtype=np.int64)
    assert oracle(required, 180, warm_start_s=30, stopped_ratio=0.02) == oracle(required, 180)
