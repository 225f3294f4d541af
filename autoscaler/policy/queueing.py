"""Queueing theory for stream-aware sizing: how many stream slots a stated service level needs.

A pool of nodes is one queue with ``s`` servers (every node serves ``C`` streams at once, so ``s`` is
the sum of the nodes' ``C``). Streams arrive at rate λ and last ``E[S]`` seconds on average, so the
offered load is ``a = λ·E[S]`` Erlangs: the mean number of streams that would be in service if no one
waited. The concurrent streams the pool sees (in service plus queued) estimate ``a``.

With Poisson arrivals and exponential service (M/M/s), Erlang's C formula gives the probability that
a new stream finds every slot busy and waits, ``C(s, a)``, and the waiting time's tail
``P(W > t) = C(s, a) · exp(−(s − a)·t / E[S])``. The smallest ``s`` meeting the operator's level is
the answer. For large loads it is the *square-root staffing* rule ``s ≈ a + β·√a`` (Halfin and Whitt,
1981), with ``β`` set by the level alone: the headroom a pool needs grows like ``√a``, not like ``a``,
so a big pool runs hotter than a small one for the same promise, which a fixed utilisation target
cannot do. Pure functions, no I/O.
"""

from __future__ import annotations

import math
from functools import lru_cache

#: Beyond this many Erlangs the exact recursion is replaced by square-root staffing (it would take
#: one step per server); a pool that large is far past any max_nodes anyway.
_EXACT_LIMIT = 100_000.0


def erlang_c(servers: int, load: float) -> float:
    """Probability that an arrival waits in an M/M/``servers`` queue offered ``load`` Erlangs.

    1.0 when ``load >= servers`` (the queue grows without bound), 0.0 for no load.
    """
    if load <= 0:
        return 0.0
    if servers <= 0 or load >= servers:
        return 1.0
    blocking = 1.0  # Erlang B with 0 servers
    for k in range(1, servers + 1):
        blocking = load * blocking / (k + load * blocking)
    return servers * blocking / (servers - load * (1.0 - blocking))


def wait_tail(servers: int, load: float, wait_s: float, service_s: float) -> float:
    """``P(W > wait_s)`` in M/M/``servers`` with mean service ``service_s`` seconds."""
    waits = erlang_c(servers, load)
    if waits >= 1.0 or waits <= 0.0:
        return waits
    return waits * math.exp(-(servers - load) * wait_s / service_s)


# Cached: a pool's load takes few distinct values tick after tick (whole streams), and the answer
# costs one step per server.
@lru_cache(maxsize=4096)
def servers_for_wait_probability(load: float, probability: float) -> int:
    """The fewest servers for which a new stream waits with probability at most ``probability``."""
    if load <= 0:
        return 0
    if load > _EXACT_LIMIT:
        return _square_root_staffing(load, probability)
    # Erlang B by recursion up to ``servers``, checking Erlang C once the queue is stable.
    blocking = 1.0
    k = 0
    while True:
        k += 1
        blocking = load * blocking / (k + load * blocking)
        if k > load:
            waits = k * blocking / (k - load * (1.0 - blocking))
            if waits <= probability:
                return k


@lru_cache(maxsize=4096)
def servers_for_wait_quantile(load: float, quantile: float, wait_s: float, service_s: float) -> int:
    """The fewest servers for which the ``quantile`` of waiting is at most ``wait_s`` seconds."""
    if load <= 0:
        return 0
    tail = 1.0 - quantile
    if load > _EXACT_LIMIT:
        return _square_root_staffing(load, tail)
    blocking = 1.0
    k = 0
    while True:
        k += 1
        blocking = load * blocking / (k + load * blocking)
        if k > load:
            waits = k * blocking / (k - load * (1.0 - blocking))
            if waits * math.exp(-(k - load) * wait_s / service_s) <= tail:
                return k


def halfin_whitt_beta(probability: float) -> float:
    """β with ``[1 + β·Φ(β)/φ(β)]⁻¹ = probability``: the square-root staffing constant for a wait level."""
    low, high = 0.0, 10.0
    for _ in range(60):
        beta = (low + high) / 2
        phi = math.exp(-beta * beta / 2) / math.sqrt(2 * math.pi)
        cdf = 0.5 * (1 + math.erf(beta / math.sqrt(2)))
        level = 1.0 / (1.0 + beta * cdf / phi)
        if level > probability:
            low = beta
        else:
            high = beta
    return high


def _square_root_staffing(load: float, probability: float) -> int:
    return math.ceil(load + halfin_whitt_beta(probability) * math.sqrt(load))
