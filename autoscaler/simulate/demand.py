"""Demand for a replay: a trace's window, scaled, turned into concurrent streams per second.

How each source becomes arrivals per second (``scale`` s):

- observed per-second counts (twitter, azure, a 1-second csv of whole numbers): each second's count
  is thinned binomially (``s < 1``) or copied ``floor(s)`` times plus a binomial thinning of the
  fraction (``s ≥ 1``), so the trace's own burstiness is kept;
- rates (a coarser or fractional csv, Prometheus ``kind: arrivals``): Poisson arrivals at
  ``rate × s`` per second;
- ServeGen windows: a renewal process per client and window with the window's law (Gamma or
  Weibull) and a mean gap of ``1 / (rate × s)``: the window's rate is authoritative. Scaling down
  is thinning (each request kept with probability s), and a thinned renewal process has gaps whose
  squared CV is ``1 + s (CV² − 1)``; the law's shape is re-fitted to that CV (exactly the Gamma
  shape ``1 / CV²``; the Weibull shape by interpolation), so a trace scaled far down becomes nearly
  Poisson, as thinning makes it. Scaling up (s > 1) keeps the law's shape.

Each arrival draws a service time (``workload.ServiceLaw``) and holds one stream from its second for
that many seconds; concurrency per second comes from difference arrays (``bincount`` of starts and
ends, ``cumsum``), in bounded chunks. Arrivals before the window are replayed too (a warm-up as long
as the 99.99th percentile of service), so streams in progress at the window's start are there; at
the very start of a trace the first seconds are mirrored to stand in for them.

Streams-valued sources (csv or Prometheus ``kind: streams``) are used as they are, times ``s``.

``peak_nodes: N`` picks ``s`` so the realised peak needs N nodes (``ceil(peak / C) == N``): start
from the expected concurrency (``rate ⊛ P(service > k)``, by FFT), then up to eight rounds of
proportional correction towards a peak of ``C × (N − 0.5)`` streams, each replayed with the same seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray

from autoscaler.errors import MetricsUnavailable, ScenarioError
from autoscaler.metrics.prometheus import PrometheusSource, safe_url
from autoscaler.policy.model import PrometheusConfig
from autoscaler.simulate.scenario import DemandSpec, Scenario
from autoscaler.simulate.traces import (
    LAW_EXPONENTIAL,
    LAW_GAMMA,
    LAW_NONE,
    LAW_WEIBULL,
    CountsTrace,
    SeriesTrace,
    ServeGenTrace,
    read_azure,
    read_csv,
    read_servegen,
    read_twitter,
)
from autoscaler.simulate.workload import ServiceLaw

#: The replay clock of traces without a date of their own: a Monday, 00:00 UTC.
DEFAULT_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
#: Arrivals processed per chunk when building concurrency (bounds memory for unscaled traces).
_CHUNK_ARRIVALS = 4_000_000
#: Most arrivals one replay simulates (minutes of work); more is a scale typo, refused up front.
MAX_ARRIVALS = 1_000_000_000
#: Most concurrent streams a replayed second may hold (a hundred million nodes' worth of load).
MAX_STREAMS = 1_000_000_000
#: Rounds of the peak_nodes correction.
_PEAK_ROUNDS = 8
#: Prometheus answers at most 11,000 points per series; stay below it.
_PROM_POINTS = 10_000
#: Rounds of renewal draws per ServeGen window before giving up on filling it.
_RENEWAL_ROUNDS = 64


@dataclass(frozen=True)
class Demand:
    """Concurrent streams per second of the replayed window, and how they were made."""

    streams: NDArray[np.int64]
    scale: float
    replay_at: datetime
    arrivals: int | None
    description: str
    notes: tuple[str, ...] = field(default=())

    @property
    def duration_s(self) -> int:
        """Seconds in the window."""
        return len(self.streams)

    def required_nodes(self, streams_per_node: int, min_nodes: int) -> NDArray[np.int64]:
        """``r(t) = max(min_nodes, ceil(streams(t) / C))`` per second."""
        need = -(-self.streams // streams_per_node)
        out: NDArray[np.int64] = np.maximum(need, min_nodes)
        return out


# ------------------------------------------------------------------------------------- arrival sources
class _ArrivalSource:
    """Arrivals per second of a trace: ``expected`` (unscaled, for the peak estimate) and ``sample``."""

    length_s: int
    epoch: datetime | None
    notes: tuple[str, ...] = ()

    def expected(self, lo: int, hi: int) -> NDArray[np.float64]:
        raise NotImplementedError

    def sample(self, lo: int, hi: int, scale: float, rng: np.random.Generator) -> NDArray[np.int64]:
        raise NotImplementedError


class _Counts(_ArrivalSource):
    """Observed per-second counts, thinned (or replicated and thinned) by the scale."""

    def __init__(self, trace: CountsTrace) -> None:
        self.counts = trace.counts
        self.length_s = len(trace.counts)
        self.epoch = trace.epoch
        self.notes = trace.notes

    def expected(self, lo: int, hi: int) -> NDArray[np.float64]:
        return self.counts[lo:hi].astype(np.float64)

    def sample(self, lo: int, hi: int, scale: float, rng: np.random.Generator) -> NDArray[np.int64]:
        counts = self.counts[lo:hi]
        whole, fraction = divmod(scale, 1.0)
        out: NDArray[np.int64] = counts * int(whole)
        if fraction > 0:
            out = out + rng.binomial(counts, fraction)
        return out


class _Rates(_ArrivalSource):
    """A rate per second; Poisson arrivals at rate × scale."""

    def __init__(
        self, rates: NDArray[np.float64], epoch: datetime | None, notes: tuple[str, ...] = ()
    ) -> None:
        self.rates = rates
        self.length_s = len(rates)
        self.epoch = epoch
        self.notes = notes

    def expected(self, lo: int, hi: int) -> NDArray[np.float64]:
        return self.rates[lo:hi]

    def sample(self, lo: int, hi: int, scale: float, rng: np.random.Generator) -> NDArray[np.int64]:
        out: NDArray[np.int64] = rng.poisson(self.rates[lo:hi] * scale).astype(np.int64)
        return out


class _ServeGen(_ArrivalSource):
    """Renewal arrivals per client and window (see the module docstring)."""

    def __init__(self, trace: ServeGenTrace) -> None:
        self.trace = trace
        self.length_s = trace.length_s
        self.epoch = None
        self.notes = (
            f"ServeGen: {trace.clients} clients, {trace.window_s} s windows synthesized into "
            "per-second arrivals with each window's rate and inter-arrival law",
        )

    def expected(self, lo: int, hi: int) -> NDArray[np.float64]:
        per_window = self.trace.total_rate()
        per_second: NDArray[np.float64] = np.repeat(per_window, self.trace.window_s)[lo:hi]
        return per_second

    def sample(self, lo: int, hi: int, scale: float, rng: np.random.Generator) -> NDArray[np.int64]:
        t = self.trace
        first = (lo // t.window_s) * t.window_s
        chosen = (t.starts >= first) & (t.starts < hi) & (t.rates > 0)
        laws = t.laws[chosen]
        times = renewal_arrivals(
            t.starts[chosen],
            t.rates[chosen] * scale,
            laws,
            thinned_shapes(laws, t.shapes[chosen], min(scale, 1.0)),
            window_s=t.window_s,
            rng=rng,
        )
        seconds = np.floor(times).astype(np.int64)
        seconds = seconds[(seconds >= lo) & (seconds < hi)] - lo
        out: NDArray[np.int64] = np.bincount(seconds, minlength=hi - lo).astype(np.int64)
        return out


def _law_draws(
    laws: NDArray[np.int8], shapes: NDArray[np.float64], rng: np.random.Generator
) -> NDArray[np.float64]:
    """One standard draw per entry from its law (Gamma(k, 1), Weibull(k), else exponential(1))."""
    out = np.empty(len(laws), dtype=np.float64)
    gamma = laws == LAW_GAMMA
    weibull = laws == LAW_WEIBULL
    other = ~(gamma | weibull)
    if gamma.any():
        out[gamma] = rng.gamma(shapes[gamma])
    if weibull.any():
        out[weibull] = rng.weibull(shapes[weibull])
    if other.any():
        out[other] = rng.exponential(1.0, int(other.sum()))
    return out


def _weibull_cv2(shapes: NDArray[np.float64]) -> NDArray[np.float64]:
    """Squared coefficient of variation of Weibull(k): Γ(1 + 2/k) / Γ(1 + 1/k)² − 1."""
    lg = np.vectorize(math.lgamma, otypes=[np.float64])
    out: NDArray[np.float64] = np.expm1(lg(1.0 + 2.0 / shapes) - 2.0 * lg(1.0 + 1.0 / shapes))
    return out


#: Weibull shapes and their squared CVs (decreasing in the shape), for inverting CV → shape.
_WEIBULL_SHAPES = np.geomspace(0.05, 50.0, 2000)
_WEIBULL_CV2 = _weibull_cv2(_WEIBULL_SHAPES)


def thinned_shapes(laws: NDArray[np.int8], shapes: NDArray[np.float64], keep: float) -> NDArray[np.float64]:
    """The law shapes whose gaps have the squared CV of the renewal process thinned to ``keep``.

    Thinning by p turns gaps of mean m and squared CV c² into a geometric sum with mean m / p and
    squared CV ``1 + p (c² − 1)``. Gamma(k) has c² = 1/k; a Weibull's c² is inverted on a grid.
    """
    if keep >= 1.0:
        return shapes
    out = shapes.copy()
    gamma = laws == LAW_GAMMA
    out[gamma] = 1.0 / (1.0 + keep * (1.0 / shapes[gamma] - 1.0))
    weibull = laws == LAW_WEIBULL
    if weibull.any():
        cv2 = 1.0 + keep * (_weibull_cv2(shapes[weibull]) - 1.0)
        # np.interp needs increasing x: the grid's CV² decreases with the shape, so reverse both.
        out[weibull] = np.interp(cv2, _WEIBULL_CV2[::-1], _WEIBULL_SHAPES[::-1])
    return out


def _law_means(laws: NDArray[np.int8], shapes: NDArray[np.float64]) -> NDArray[np.float64]:
    """Mean of each standard law: k for Gamma(k, 1), Γ(1 + 1/k) for Weibull(k), 1 for exponential."""
    means = np.ones(len(laws), dtype=np.float64)
    gamma = laws == LAW_GAMMA
    means[gamma] = shapes[gamma]
    weibull = laws == LAW_WEIBULL
    if weibull.any():
        means[weibull] = np.exp([math.lgamma(1.0 + 1.0 / k) for k in shapes[weibull]])
    return means


def renewal_arrivals(
    starts: NDArray[np.int64],
    rates: NDArray[np.float64],
    laws: NDArray[np.int8],
    shapes: NDArray[np.float64],
    *,
    window_s: int,
    rng: np.random.Generator,
) -> NDArray[np.float64]:
    """Arrival instants of one renewal process per window, all windows at once.

    Window ``i`` starts at ``starts[i]`` and lasts ``window_s``; its gaps follow ``laws[i]`` with shape
    ``shapes[i]``, scaled to a mean of ``1 / rates[i]``. The first gap is a uniform fraction of a
    draw (a stationary start, roughly). Gaps are drawn in rounds for the windows not yet filled, each
    round about the expected number plus three standard deviations, so the work is vectorised.
    """
    laws = np.where(laws == LAW_NONE, LAW_EXPONENTIAL, laws).astype(np.int8)
    denominator = rates * _law_means(laws, shapes)
    factor = np.divide(1.0, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    position = np.zeros(len(starts), dtype=np.float64)
    active = np.flatnonzero(rates > 0)
    found: list[NDArray[np.float64]] = []
    first = True
    for _ in range(_RENEWAL_ROUNDS):
        if active.size == 0:
            break
        expected = (window_s - position[active]) * rates[active]
        want = np.ceil(expected + 3.0 * np.sqrt(expected) + 2.0).astype(np.int64)
        index = np.repeat(active, want)
        gaps = _law_draws(laws[index], shapes[index], rng) * factor[index]
        heads = np.concatenate(([0], np.cumsum(want)[:-1]))
        if first:
            gaps[heads] *= rng.random(len(heads))
            first = False
        total = np.cumsum(gaps)
        before = np.concatenate(([0.0], total))[heads]
        at = position[index] + total - np.repeat(before, want)
        keep = at < window_s
        found.append(starts[index[keep]] + at[keep])
        tails = heads + want - 1
        position[active] = at[tails]
        active = active[position[active] < window_s]
    return np.concatenate(found) if found else np.zeros(0, dtype=np.float64)


# -------------------------------------------------------------------------------------- concurrency
def concurrency(
    counts: NDArray[np.int64], law: ServiceLaw, rng: np.random.Generator, *, warmup: int
) -> NDArray[np.int64]:
    """Streams in progress per second of a window, from arrivals per second that start ``warmup`` s early.

    Arrival ``j`` in second ``s`` holds a stream over seconds ``[s, s + service_j)``. Processed in
    chunks of about four million arrivals so an unscaled trace does not exhaust memory.
    """
    length = len(counts) - warmup
    diff = np.zeros(length + 1, dtype=np.int64)
    cumulative = np.cumsum(counts)
    begin = 0
    while begin < len(counts):
        reached = int(cumulative[begin - 1]) if begin else 0
        end = int(np.searchsorted(cumulative, reached + _CHUNK_ARRIVALS, side="right"))
        end = max(end, begin + 1)
        chunk = counts[begin:end]
        n = int(chunk.sum())
        if n:
            starts = np.repeat(np.arange(begin - warmup, end - warmup, dtype=np.int64), chunk)
            ends = starts + law.draw(rng, n)
            np.clip(starts, 0, length, out=starts)
            np.clip(ends, 0, length, out=ends)
            diff += np.bincount(starts, minlength=length + 1)[: length + 1]
            diff -= np.bincount(ends, minlength=length + 1)[: length + 1]
        begin = end
    out: NDArray[np.int64] = np.cumsum(diff[:length])
    return out


def expected_concurrency(rates: NDArray[np.float64], law: ServiceLaw, *, warmup: int) -> NDArray[np.float64]:
    """Expected streams per second: ``Σ_k rate(t − k) · P(service > k)``, by FFT convolution."""
    survival = law.survival(warmup + 1)
    size = len(rates) + len(survival) - 1
    n = 1 << (size - 1).bit_length()
    conv = np.fft.irfft(np.fft.rfft(rates, n) * np.fft.rfft(survival, n), n)[: len(rates)]
    out: NDArray[np.float64] = conv[warmup:]
    return out


def _with_warmup(
    source: _ArrivalSource,
    offset: int,
    length: int,
    warmup: int,
    scale: float | None,
    rng: np.random.Generator | None,
) -> NDArray[Any]:
    """Arrivals (or expected rates when ``rng`` is None) for ``[offset − warmup, offset + length)``;
    seconds before the trace's start mirror its first seconds."""
    lo = offset - warmup
    hi = offset + length
    start = max(lo, 0)
    if rng is None:
        main: NDArray[Any] = source.expected(start, hi)
    else:
        assert scale is not None
        main = source.sample(start, hi, scale, rng)
    if lo >= 0:
        return main
    pad = -lo
    mirrored = np.resize(main[::-1] if pad > len(main) else main[:pad][::-1], pad)
    joined: NDArray[Any] = np.concatenate((mirrored, main))
    return joined


# ------------------------------------------------------------------------------------------ building
def _prometheus_series(spec: DemandSpec, warmup: int) -> tuple[NDArray[np.float64], datetime, int]:
    """Per-second values of the demand query over the window (and the warm-up before it)."""
    assert isinstance(spec.start, datetime) and spec.url and spec.query
    start = spec.start if spec.start.tzinfo else spec.start.replace(tzinfo=UTC)
    begin = start - timedelta(seconds=warmup)
    length = spec.duration_s + warmup
    step_s = max(1, int(spec.step.total_seconds()))
    source = PrometheusSource(PrometheusConfig(url=spec.url, timeout=spec.timeout))
    points: list[tuple[float, float]] = []
    try:
        chunk = timedelta(seconds=step_s * (_PROM_POINTS - 1))
        at = begin
        end = begin + timedelta(seconds=length)
        while at < end:
            upto = min(at + chunk, end - timedelta(seconds=1))
            points.extend(source.query_range(spec.query, at, upto, timedelta(seconds=step_s)))
            at = upto + timedelta(seconds=step_s)
    except MetricsUnavailable as exc:
        raise ScenarioError(f"demand: cannot read history from Prometheus: {exc}") from exc
    finally:
        source.close()
    values = np.zeros(length, dtype=np.float64)
    seen = np.zeros(length, dtype=bool)
    base = begin.timestamp()
    for stamp, value in points:
        first = round(stamp - base)
        if 0 <= first < length:
            values[first : first + step_s] = value
            seen[first : first + step_s] = True
    window_seen = seen[warmup:]
    if not window_seen.any():
        raise ScenarioError(
            f"demand: Prometheus at {safe_url(spec.url or '')} has no data for {spec.query!r} "
            f"between {start.isoformat()} and {(start + spec.duration).isoformat()}"
        )
    return values, begin, int((~window_seen).sum())


def _open_source(scenario: Scenario) -> _ArrivalSource | SeriesTrace:
    spec = scenario.spec.demand
    path = scenario.demand_path()
    if spec.format == "twitter":
        return _Counts(read_twitter(path, fill_gaps=spec.fill_gaps is not False))
    if spec.format == "servegen":
        assert spec.model is not None
        return _ServeGen(read_servegen(path, spec.model))
    if spec.format == "azure":
        return _Counts(read_azure(path))
    trace = read_csv(path)
    if spec.value_kind == "streams":
        return trace
    if trace.whole_counts:
        return _Counts(CountsTrace(counts=trace.values.astype(np.int64), epoch=trace.epoch))
    return _Rates(trace.values, trace.epoch)


def _check_window(spec: DemandSpec, length: int, what: str) -> None:
    offset, duration = spec.offset_s, spec.duration_s
    if offset >= length or offset + duration > length:
        raise ScenarioError(
            f"demand: the window from {offset} s for {duration} s ({offset / 86400:.2f} d to "
            f"{(offset + duration) / 86400:.2f} d) runs past the end of {what}, which is {length} s "
            f"({length / 86400:.2f} d) long"
        )


def build_demand(scenario: Scenario, streams_per_node: int) -> Demand:
    """The scenario's demand as concurrent streams per second, scaled as the scenario says.

    Same scenario and seed give the same streams. Raises ``ScenarioError`` for an unreadable or
    malformed trace, a window outside the trace, or a demand with no load to scale.
    """
    spec = scenario.spec.demand
    law = ServiceLaw(scenario.spec.workload)
    seed = scenario.spec.seed
    notes: list[str] = []
    if spec.format == "prometheus":
        warmup = law.warmup_s() if spec.value_kind == "arrivals" else 0
        values, begin, blind = _prometheus_series(spec, warmup)
        if blind:
            notes.append(
                f"Prometheus had no data for {blind} s of the window; those seconds count as no demand"
            )
        epoch: datetime | None = begin
        offset = warmup
        description = f"Prometheus {safe_url(spec.url or '')}: {spec.query}"
        source: _ArrivalSource | SeriesTrace = (
            _Rates(values, begin)
            if spec.value_kind == "arrivals"
            else SeriesTrace(values=values, epoch=begin, whole_counts=False)
        )
    else:
        source = _open_source(scenario)
        length = len(source.values) if isinstance(source, SeriesTrace) else source.length_s
        _check_window(spec, length, f"the trace {scenario.demand_path().name}")
        epoch = source.epoch
        offset = spec.offset_s
        description = f"{spec.format} trace {scenario.demand_path().name}"
        if spec.format == "servegen":
            description += f" (model {spec.model})"
        warmup = law.warmup_s()
    notes.extend(source.notes)
    duration = spec.duration_s
    # The window's first second on the replay clock: for Prometheus ``begin + warm-up`` is ``start``.
    replay_at = spec.replay_at or ((epoch or DEFAULT_EPOCH) + timedelta(seconds=offset))

    if isinstance(source, SeriesTrace):
        window = source.values[offset : offset + duration]
        peak = float(window.max()) if len(window) else 0.0
        scale = _fixed_scale(spec, peak, streams_per_node)
        if not math.isfinite(peak * scale) or peak * scale > MAX_STREAMS:
            raise ScenarioError(
                f"demand: scale {scale:g} makes the peak {peak * scale:.3g} concurrent streams; a replay "
                f"holds at most {MAX_STREAMS:.0e}: lower demand.scale or peak_nodes"
            )
        streams = np.floor(window * scale + 0.5).astype(np.int64)
        return Demand(
            streams=streams,
            scale=scale,
            replay_at=replay_at,
            arrivals=None,
            description=description + " (concurrent streams)",
            notes=tuple(notes),
        )

    expected_window = source.expected(max(offset - warmup, 0), offset + duration)

    def realise(scale: float) -> tuple[NDArray[np.int64], int]:
        _check_size(expected_window, scale)
        rng = np.random.default_rng([seed, 1])
        counts = _with_warmup(source, offset, duration, warmup, scale, rng)
        assert counts.dtype == np.int64
        return concurrency(counts.astype(np.int64), law, rng, warmup=warmup), int(counts[warmup:].sum())

    if spec.peak_nodes is None:
        scale = spec.scale if spec.scale is not None else 1.0
        streams, arrivals = realise(scale)
    else:
        target = streams_per_node * (spec.peak_nodes - 0.5)
        rates = _with_warmup(source, offset, duration, warmup, None, None).astype(np.float64)
        expected_peak = float(expected_concurrency(rates, law, warmup=warmup).max())
        if expected_peak <= 0:
            raise ScenarioError("demand: the window has no arrivals, so it cannot be scaled to peak_nodes")
        scale = target / expected_peak
        best: tuple[int, int, float, NDArray[np.int64], int] | None = None
        for attempt in range(_PEAK_ROUNDS):
            streams, arrivals = realise(scale)
            peak = int(streams.max())
            need = -(-peak // streams_per_node)
            miss = abs(need - spec.peak_nodes)
            if best is None or miss <= best[0]:
                best = (miss, attempt, scale, streams, arrivals)
            if miss == 0:
                break
            scale *= target / max(peak, 1)
        assert best is not None
        miss, _, scale, streams, arrivals = best
        if miss:
            notes.append(
                f"peak_nodes {spec.peak_nodes}: the closest scale found gives a peak that needs "
                f"{-(-int(streams.max()) // streams_per_node)} nodes"
            )
    return Demand(
        streams=streams,
        scale=scale,
        replay_at=replay_at,
        arrivals=arrivals,
        description=description,
        notes=tuple(notes),
    )


def _check_size(expected: NDArray[np.float64], scale: float) -> None:
    """Refuse a replay whose arrivals would not fit: before any per-arrival array is allocated."""
    total = float(expected.sum()) * scale if len(expected) else 0.0
    busiest = float(expected.max()) * scale if len(expected) else 0.0
    finite = math.isfinite(total) and math.isfinite(busiest)
    if not finite or total > MAX_ARRIVALS or busiest > _CHUNK_ARRIVALS:
        raise ScenarioError(
            f"demand: scale {scale:g} means about {total:.3g} arrivals ({busiest:.3g} in the busiest "
            f"second); a replay simulates at most {MAX_ARRIVALS:.0e} ({_CHUNK_ARRIVALS:.0e} in one "
            "second): lower demand.scale or peak_nodes, or shorten the window"
        )


def _fixed_scale(spec: DemandSpec, peak: float, streams_per_node: int) -> float:
    if spec.peak_nodes is None:
        return spec.scale if spec.scale is not None else 1.0
    if peak <= 0:
        raise ScenarioError("demand: the window has no streams, so it cannot be scaled to peak_nodes")
    return streams_per_node * (spec.peak_nodes - 0.5) / peak
