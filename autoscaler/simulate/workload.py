"""How long a request holds a stream: audio length (from the scenario's distribution) × real-time factor.

``ServiceLaw`` draws service times in whole seconds (at least one), gives their survival function
(for the expected concurrency behind ``peak_nodes``), the warm-up a replay needs so that streams in
progress at the window's start are present, and the residual time of streams in progress (for how
long a draining node takes to empty).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from autoscaler.simulate.scenario import ExponentialAudio, FixedAudio, LognormalAudio, Workload

#: Streams started more than this quantile of service time before the window are negligible.
_WARMUP_SURVIVAL = 1e-4
#: Longest warm-up considered (a distribution with a fatter tail is cut here).
_MAX_WARMUP_S = 86_400
#: Size of the pool of service times the residual draws resample from.
_RESIDUAL_POOL = 65_536


@dataclass(frozen=True)
class ServiceLaw:
    """Service seconds of one request: ``ceil(audio × rtf)``, at least 1."""

    workload: Workload

    @property
    def rtf(self) -> float:
        """Processing seconds per audio second."""
        return self.workload.real_time_factor

    def draw(self, rng: np.random.Generator, n: int) -> NDArray[np.int64]:
        """``n`` service times in whole seconds (ceil of audio × rtf, at least one)."""
        audio = self.workload.audio_seconds
        seconds: NDArray[np.float64]
        if isinstance(audio, FixedAudio):
            seconds = np.full(n, audio.mean, dtype=np.float64)
        elif isinstance(audio, LognormalAudio):
            seconds = rng.lognormal(audio.mu, audio.sigma, n)
            if audio.max is not None:
                np.minimum(seconds, audio.max, out=seconds)
        else:
            seconds = rng.exponential(audio.mean, n)
            if audio.max is not None:
                np.minimum(seconds, audio.max, out=seconds)
        out: NDArray[np.int64] = np.maximum(np.ceil(seconds * self.rtf), 1).astype(np.int64)
        return out

    def survival(self, length: int) -> NDArray[np.float64]:
        """``S[k] = P(service > k)`` for ``k = 0 .. length-1`` (service in whole seconds)."""
        k = np.arange(length, dtype=np.float64)
        audio = self.workload.audio_seconds
        if isinstance(audio, FixedAudio):
            service = max(1, math.ceil(audio.mean * self.rtf))
            return (k < service).astype(np.float64)
        if isinstance(audio, LognormalAudio):
            # P(ceil(A·rtf) > k) = P(A > k/rtf) for whole k; 1 at k = 0 (service is at least 1 s).
            with np.errstate(divide="ignore"):
                z = (np.log(k / self.rtf) - audio.mu) / audio.sigma
            s = np.array([0.5 * math.erfc(v / math.sqrt(2)) for v in z], dtype=np.float64)
            cap = audio.max
        else:
            assert isinstance(audio, ExponentialAudio)
            s = np.exp(-k / (audio.mean * self.rtf))
            cap = audio.max
        s[0] = 1.0
        if cap is not None:
            s[k >= max(1, math.ceil(cap * self.rtf))] = 0.0
        return s

    def warmup_s(self) -> int:
        """Seconds of demand before a window whose streams can still be running inside it."""
        audio = self.workload.audio_seconds
        if isinstance(audio, FixedAudio):
            return max(1, math.ceil(audio.mean * self.rtf))
        length = 1024
        while True:
            s = self.survival(length)
            below = np.flatnonzero(s < _WARMUP_SURVIVAL)
            if below.size:
                return int(below[0])
            if length >= _MAX_WARMUP_S:
                return _MAX_WARMUP_S
            length = min(length * 4, _MAX_WARMUP_S)

    def mean_s(self) -> float:
        """Mean service time in seconds (of the whole-second draws, from the survival function)."""
        return float(self.survival(self.warmup_s() + 1).sum())

    def quantile_s(self, q: float) -> float:
        """The ``q`` quantile of service time in whole seconds."""
        s = self.survival(self.warmup_s() + 1)
        above = np.flatnonzero(s <= 1.0 - q)
        return float(above[0]) if above.size else float(len(s))

    def residual_sampler(self, rng: np.random.Generator) -> ResidualSampler:
        """A sampler of the remaining service time of streams found in progress (length-biased)."""
        return ResidualSampler(self.draw(rng, _RESIDUAL_POOL), rng)


class ResidualSampler:
    """Remaining seconds of streams that are in progress at a random instant.

    A stream found in progress is longer than a typical one (the inspection paradox): its length is
    drawn with probability proportional to length, and the time it has left is uniform over it.
    """

    def __init__(self, pool: NDArray[np.int64], rng: np.random.Generator) -> None:
        self._pool = np.sort(pool).astype(np.float64)
        weights = np.cumsum(self._pool)
        self._cumulative = weights / weights[-1]
        self._rng = rng

    def draw(self, n: int) -> NDArray[np.int64]:
        """``n`` remaining service times in whole seconds (at least one)."""
        if n <= 0:
            return np.zeros(0, dtype=np.int64)
        index = np.searchsorted(self._cumulative, self._rng.random(n), side="right")
        lengths = self._pool[np.minimum(index, len(self._pool) - 1)]
        left: NDArray[np.int64] = np.maximum(np.ceil(lengths * self._rng.random(n)), 1).astype(np.int64)
        return left
