"""Physical plausibility of a reading: a value a signal cannot take is *no data*, with a reason.

Prometheus happily returns ``-5`` active streams (a broken recording rule, a counter reset) or
``1e300`` (an exporter's uninitialised float); the engine would act on either, draining the pool or
launching to max. A reading outside the check's range is turned into a missing sample whose error
says why, so the engine's missing-data rules (hold, never remove capacity) apply instead. Pure
functions, no I/O.
"""

from __future__ import annotations

import math

from autoscaler.domain import Sample

#: What no signal this autoscaler reads can exceed (streams, bytes ratios, seconds, queue lengths).
DEFAULT_MAX = 1e6
#: Tighter ceilings for signals whose unit bounds them.
SIGNAL_MAX: dict[str, float] = {
    "gpu_memory_utilization": 100.0,  # a fraction or a percent; never more than 100
    "p95_latency_seconds": 86_400.0,  # a day
}
#: The error prefix of a sample refused here (metrics and logs group on it).
IMPLAUSIBLE = "implausible value"


def bounds_for(
    signal: str | None, low: float | None = None, high: float | None = None
) -> tuple[float, float]:
    """The ``(low, high)`` a reading of ``signal`` must lie in: explicit bounds win, else the defaults
    (no negative values; ``SIGNAL_MAX`` or ``DEFAULT_MAX``)."""
    default_high = SIGNAL_MAX.get(signal or "", DEFAULT_MAX)
    return (0.0 if low is None else low, default_high if high is None else high)


def plausible(sample: Sample, low: float, high: float) -> Sample:
    """``sample`` unchanged when it has no value or its value lies in ``[low, high]``; otherwise a
    missing sample saying which value was refused and why (NaN and ±Inf included)."""
    value = sample.value
    if value is None:
        return sample
    if math.isnan(value) or math.isinf(value):
        return Sample.missing(f"{IMPLAUSIBLE} {value!r}: not a finite number")
    if value < low:
        return Sample.missing(f"{IMPLAUSIBLE} {value:g}: below the check's minimum {low:g}")
    if value > high:
        return Sample.missing(f"{IMPLAUSIBLE} {value:g}: above the check's maximum {high:g}")
    return sample


def plausible_streams(value: float | None, capacity: float | None = None) -> float | None:
    """A node's own count of active streams, or None (unknown) when it cannot be one: negative,
    not finite, or beyond a hundred times the node's capacity."""
    if value is None or not math.isfinite(value) or value < 0:
        return None
    if value > (DEFAULT_MAX if capacity is None else max(capacity, 1) * 100):
        return None
    return value
