"""Small inline SVG charts for the dry-run report: no JavaScript, no network, no plotting library.

A chart is a list of series over the same time axis (seconds from the window's start), drawn as
lines, or as areas stacked on each other. Long series are reduced to at most ``buckets`` points per
series with a reducer that keeps what matters (the highest demand, the lowest capacity).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape
from typing import Literal

import numpy as np
from numpy.typing import NDArray

Reducer = Literal["max", "min", "mean"]

_WIDTH = 960
_HEIGHT = 260
_LEGEND_ROW = 16
_LEFT = 56
_RIGHT = 16
_TOP = 14
_BOTTOM = 38


@dataclass(frozen=True)
class Series:
    """One line or area: its label, CSS colour, values (one per ``step_s`` seconds) and reducer."""

    label: str
    color: str
    values: NDArray[np.float64] | NDArray[np.int64]
    step_s: int = 1
    reduce: Reducer = "max"
    dashed: bool = False


def _reduce(values: NDArray[np.float64], parts: int, how: Reducer) -> NDArray[np.float64]:
    if len(values) <= parts:
        return values
    size = -(-len(values) // parts)
    padded = np.full(size * parts, np.nan)
    padded[: len(values)] = values
    grid = padded.reshape(parts, size)
    # The padded tail can make a bucket all-NaN; it is dropped below, so its warning is noise.
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if how == "max":
            out: NDArray[np.float64] = np.nanmax(grid, axis=1)
        elif how == "min":
            out = np.nanmin(grid, axis=1)
        else:
            out = np.nanmean(grid, axis=1)
    return out[~np.isnan(out)]


def _nice_ceiling(value: float) -> float:
    if value <= 0:
        return 1.0
    power = 10 ** np.floor(np.log10(value))
    for factor in (1, 2, 2.5, 5, 10):
        if value <= factor * power:
            return float(factor * power)
    return float(10 * power)


def _time_ticks(duration_s: int, start: datetime) -> list[tuple[float, str]]:
    """Gridlines: one per day (date labels) on long windows, every few hours on short ones."""
    day = 86_400
    if duration_s >= 2 * day:
        every = day * max(1, duration_s // (14 * day))
        first = (day - (start.hour * 3600 + start.minute * 60 + start.second)) % day
        fmt = "%a %d %b"
    else:
        every = 3600 * max(1, duration_s // (12 * 3600))
        first = (3600 - (start.minute * 60 + start.second)) % 3600
        fmt = "%H:%M" if duration_s > 3600 else "%H:%M:%S"
        if duration_s <= 3 * 3600:
            every = max(60, (duration_s // 6) // 60 * 60)
            first = 0
    out = []
    t = first
    while t <= duration_s:
        out.append((t / max(duration_s, 1), (start + timedelta(seconds=t)).strftime(fmt)))
        t += every
    return out


def chart(
    title: str,
    series: Sequence[Series],
    *,
    duration_s: int,
    start: datetime,
    y_label: str,
    stacked: bool = False,
    buckets: int = 900,
) -> str:
    """An ``<svg>`` element (as text) with ``series`` over ``[0, duration_s)``, a time axis and a legend."""
    plot_w = _WIDTH - _LEFT - _RIGHT
    plot_h = _HEIGHT - _TOP - _BOTTOM
    reduced = [_reduce(np.asarray(s.values, dtype=np.float64), buckets, s.reduce) for s in series]
    if stacked:
        size = min((len(r) for r in reduced), default=0)
        tops = np.cumsum(np.array([r[:size] for r in reduced]), axis=0) if size else np.zeros((0, 0))
        ymax = _nice_ceiling(float(tops.max()) if tops.size else 0.0)
    else:
        ymax = _nice_ceiling(max((float(r.max()) for r in reduced if r.size), default=0.0))

    def x(i: int, n: int) -> float:
        return _LEFT + plot_w * (i / max(n - 1, 1))

    def y(v: float) -> float:
        return _TOP + plot_h * (1 - v / ymax)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" class="chart">',
        f"<title>{escape(title)}</title>",
    ]
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        gy = y(ymax * fraction)
        parts.append(f'<line x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{gy:.1f}" y2="{gy:.1f}" class="grid"/>')
        parts.append(f'<text x="{_LEFT - 6}" y="{gy + 4:.1f}" text-anchor="end">{ymax * fraction:g}</text>')
    for position, label in _time_ticks(duration_s, start):
        gx = _LEFT + plot_w * position
        parts.append(f'<line x1="{gx:.1f}" x2="{gx:.1f}" y1="{_TOP}" y2="{_TOP + plot_h}" class="grid"/>')
        parts.append(
            f'<text x="{gx:.1f}" y="{_HEIGHT - _BOTTOM + 16}" text-anchor="middle">{escape(label)}</text>'
        )
    parts.append(
        f'<text x="14" y="{_TOP + plot_h / 2:.0f}" transform="rotate(-90 14 {_TOP + plot_h / 2:.0f})" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    if stacked and reduced:
        size = tops.shape[1]
        for index in range(len(series) - 1, -1, -1):
            top = tops[index]
            bottom = tops[index - 1] if index else np.zeros(size)
            points = [f"{x(i, size):.1f},{y(v):.1f}" for i, v in enumerate(top)]
            points += [f"{x(i, size):.1f},{y(v):.1f}" for i, v in reversed(list(enumerate(bottom)))]
            parts.append(
                f'<polygon points="{" ".join(points)}" fill="{series[index].color}" '
                f'fill-opacity="0.85" stroke="none"/>'
            )
    else:
        for s, values in zip(series, reduced, strict=True):
            if not values.size:
                continue
            n = len(values)
            line = " ".join(f"{x(i, n):.1f},{y(v):.1f}" for i, v in enumerate(values))
            dash = ' stroke-dasharray="6 4"' if s.dashed else ""
            parts.append(
                f'<polyline points="{line}" fill="none" stroke="{s.color}" stroke-width="1.4"{dash}/>'
            )
    # The legend wraps onto more rows below the plot when it is wider than the chart.
    legend_x, row = _LEFT, 0
    for s in series:
        width = 24 + 7 * len(s.label)
        if legend_x > _LEFT and legend_x + width > _WIDTH - _RIGHT:
            legend_x, row = _LEFT, row + 1
        base = _HEIGHT + row * _LEGEND_ROW
        parts.append(f'<rect x="{legend_x}" y="{base - 14}" width="12" height="8" fill="{s.color}"/>')
        parts.append(f'<text x="{legend_x + 16}" y="{base - 6}">{escape(s.label)}</text>')
        legend_x += width
    height = _HEIGHT + row * _LEGEND_ROW
    parts[0] = parts[0].replace(f'viewBox="0 0 {_WIDTH} {_HEIGHT}"', f'viewBox="0 0 {_WIDTH} {height}"')
    parts.append("</svg>")
    return "\n".join(parts)
