"""Stream-aware sizing: Erlang C, the queueing check, and the promised level on simulated arrivals."""

from __future__ import annotations

import heapq
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_helpers import NOW, nodes, policy, reason, run, samples

from autoscaler.domain import Lifecycle, Node
from autoscaler.policy.checks import nodes_for_slots
from autoscaler.policy.queueing import (
    erlang_c,
    halfin_whitt_beta,
    servers_for_wait_probability,
    servers_for_wait_quantile,
    wait_tail,
)

QUEUE = {"name": "streams", "type": "queueing", "query": "sum(asr_active_streams) + sum(asr_queued_streams)",
         "service_level": {"wait_probability": 0.05}, "stream_seconds": "60s"}


def _simulate_mms(servers: int, load: float, arrivals: int, seed: int) -> list[float]:
    """Waiting times of ``arrivals`` Poisson arrivals in an M/M/``servers`` FIFO queue (mean service 1)."""
    rng = random.Random(seed)
    free_at = [0.0] * servers  # when each slot frees up, as a heap
    t = 0.0
    waits = []
    for _ in range(arrivals):
        t += rng.expovariate(load)  # arrival rate λ = load / E[S] with E[S] = 1
        earliest = heapq.heappop(free_at)
        start = max(t, earliest)
        waits.append(start - t)
        heapq.heappush(free_at, start + rng.expovariate(1.0))
    return waits[arrivals // 10:]  # drop the warm-up


def test_erlang_c_known_values() -> None:
    """Erlang C matches textbook values (2 servers at 1 Erlang: 1/3; 10 servers at 8 Erlangs ≈ 0.409)."""
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c(10, 8.0) == pytest.approx(0.4092, abs=1e-3)
    assert erlang_c(5, 5.0) == 1.0
    assert erlang_c(5, 0.0) == 0.0


@pytest.mark.parametrize(("load", "probability"), [(4.0, 0.2), (25.0, 0.05), (80.0, 0.05), (150.0, 0.01)])
def test_wait_probability_level_is_met_on_simulated_arrivals(load: float, probability: float) -> None:
    """With Poisson arrivals and exponential service the sized pool makes at most p of streams wait."""
    servers = servers_for_wait_probability(load, probability)
    assert erlang_c(servers, load) <= probability < erlang_c(servers - 1, load)  # the fewest that do
    waits = [w for seed in range(3) for w in _simulate_mms(servers, load, 40_000, seed=seed)]
    measured = sum(w > 0 for w in waits) / len(waits)
    # Waiting is bursty, so the sampling error of 108,000 correlated arrivals is ~10 % of p.
    assert measured <= probability * 1.25 + 0.005, (servers, measured)


@pytest.mark.parametrize(("load", "wait_s", "quantile"), [(20.0, 0.1, 0.95), (120.0, 0.05, 0.95)])
def test_wait_quantile_level_is_met_on_simulated_arrivals(
    load: float, wait_s: float, quantile: float
) -> None:
    """The sized pool keeps the stated quantile of waiting under the bound (mean service 1 s)."""
    servers = servers_for_wait_quantile(load, quantile, wait_s, 1.0)
    assert wait_tail(servers, load, wait_s, 1.0) <= 1 - quantile
    waits = [w for seed in range(3) for w in _simulate_mms(servers, load, 40_000, seed=seed)]
    late = sum(w > wait_s for w in waits) / len(waits)
    # Waiting is bursty, so the sampling error of 108,000 correlated arrivals is ~10 % of the tail.
    assert late <= (1 - quantile) * 1.25, (servers, late)


def test_headroom_shrinks_with_load_unlike_a_utilisation_target() -> None:
    """Square-root staffing: big pools run hotter than small ones for the same promise."""
    small = servers_for_wait_probability(5.0, 0.05)
    large = servers_for_wait_probability(150.0, 0.05)
    assert small / 5.0 > large / 150.0
    # A 70 % utilisation target leaves too little at low load and too much at high load.
    target_small, target_large = math.ceil(5.0 / 0.7), math.ceil(150.0 / 0.7)
    assert erlang_c(target_small, 5.0) > 0.05 >= erlang_c(small, 5.0)
    assert large < target_large


def test_square_root_staffing_approximates_the_exact_answer() -> None:
    """s ≈ a + β√a with Halfin-Whitt's β is within a couple of servers of Erlang C at 400 Erlangs."""
    load = 400.0
    beta = halfin_whitt_beta(0.05)
    assert abs(load + beta * math.sqrt(load) - servers_for_wait_probability(load, 0.05)) <= 3


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 2000), st.floats(0, 2000), st.sampled_from([0.01, 0.05, 0.2]))
def test_more_load_never_needs_fewer_servers(a: float, b: float, p: float) -> None:
    """Monotonic: the slots needed never fall as the offered load rises."""
    low, high = sorted((a, b))
    assert servers_for_wait_probability(low, p) <= servers_for_wait_probability(high, p)


def test_nodes_for_slots_keeps_big_nodes_and_adds_the_launch_type() -> None:
    """Scale-out adds launch-type nodes; scale-in drops the smallest nodes while slots suffice."""
    assert nodes_for_slots(45, [10, 10, 10], 10) == 5
    assert nodes_for_slots(25, [30, 10, 10], 10) == 1
    assert nodes_for_slots(35, [30, 10, 10], 10) == 2
    assert nodes_for_slots(0, [10], 10) == 0


def test_queueing_check_votes_out_and_in_with_reasons() -> None:
    """The check turns concurrent streams into nodes for its level, and says why."""
    pol = policy(checks=[QUEUE])
    up = run(pol, samples(streams=80.0), nodes(5))
    slots = servers_for_wait_probability(80.0, 0.05)
    assert up.decision.desired == math.ceil(slots / 10)
    r = reason(up, "check", "streams")
    assert r.detail["slots"] == slots and r.detail["vote"] == "out"
    assert "wait probability ≤ 0.05" in r.message
    down = run(pol, samples(streams=12.0), nodes(8))
    assert down.decision.desired == math.ceil(servers_for_wait_probability(12.0, 0.05) / 10)
    assert reason(down, "check", "streams").detail["vote"] == "in"


def test_queueing_check_counts_booting_and_mixed_capacities() -> None:
    """Booting nodes are slots on the way; a 30-stream node counts as 30 slots."""
    pol = policy(checks=[QUEUE])
    fleet = [*nodes(2, booting=1),
             Node("big", Lifecycle.SERVING, "gpu-l40s", 30, "v2", NOW, active_streams=5.0, image="img-2")]
    ev = run(pol, samples(streams=40.0), fleet)
    need = servers_for_wait_probability(40.0, 0.05)
    assert need <= 60
    assert ev.decision.launch == 0


def test_queueing_wait_level_uses_stream_seconds() -> None:
    """A p95-wait level sizes with the mean stream length: shorter streams need fewer slots."""
    level = {"wait": "30s", "quantile": 0.95}
    short = policy(checks=[{**QUEUE, "service_level": level, "stream_seconds": "30s"}])
    long = policy(checks=[{**QUEUE, "service_level": level, "stream_seconds": "600s"}])
    a = run(short, samples(streams=60.0), nodes(5)).decision.desired
    b = run(long, samples(streams=60.0), nodes(5)).decision.desired
    assert a <= b
