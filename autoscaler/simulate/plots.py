"""The dry-run report's figures, drawn with matplotlib and inlined as SVG (no script, nothing fetched).

Per-second series are reduced to at most a few thousand points per line with the reducer that keeps
what matters to a user: the highest demand and waiting, the lowest capacity in each interval. Each
schedule gets its own colour *and* dash style, so lines that coincide stay tellable apart (and
legible in grey print). Output is deterministic (fixed SVG id salt, no date in the metadata), so the
same scenario and seed give byte-identical reports.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import matplotlib
import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from numpy.typing import NDArray

Reducer = Literal["max", "min", "mean"]

#: Colour-blind-safe colours (Okabe–Ito) for schedules, in order; demand is always black.
COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
#: Dash styles paired with the colours: a second cue where lines overlap.
DASHES: tuple[str | tuple[int, tuple[int, ...]], ...] = (
    "-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (8, 2)), (0, (1, 1))
)
STATE_COLORS = {"serving": "#009E73", "booting": "#E69F00", "draining": "#9E9E9E"}
_WIDTH_IN = 12.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Typed loosely: matplotlib's stubs want literal keys, and this is a plain rc mapping.
_RC: Any = {
    "svg.hashsalt": "gpu-autoscaler-dry-run",
    "svg.fonttype": "none",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.grid": True,
    "grid.color": "#e5e7eb",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 8,
    "legend.frameon": False,
}


@dataclass(frozen=True)
class Line:
    """One schedule's line: label, per-second values and the reducer to bucket them with."""

    label: str
    values: NDArray[np.int64] | NDArray[np.float64]
    reduce: Reducer = "min"
    step_s: int = 1


def style(index: int) -> dict[str, Any]:
    """Colour and dash style of the ``index``-th schedule."""
    return {"color": COLORS[index % len(COLORS)], "linestyle": DASHES[index % len(DASHES)]}


def bucket(
    values: NDArray[np.int64] | NDArray[np.float64], lo: int, hi: int, parts: int, how: Reducer,
    step_s: int = 1,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``values`` (one per ``step_s`` seconds) over seconds ``[lo, hi)`` reduced to at most ``parts``
    points: (bucket start seconds, reduced values)."""
    first, last = lo // step_s, -(-hi // step_s)
    window = np.asarray(values[first:last], dtype=np.float64)
    if len(window) == 0:
        return np.zeros(0), np.zeros(0)
    size = max(1, -(-len(window) // parts))
    count = -(-len(window) // size)
    padded = np.full(count * size, np.nan)
    padded[: len(window)] = window
    grid = padded.reshape(count, size)
    # The padded tail never makes a bucket all-NaN (count is the ceiling), but keep numpy quiet.
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if how == "max":
            out = np.nanmax(grid, axis=1)
        elif how == "min":
            out = np.nanmin(grid, axis=1)
        else:
            out = np.nanmean(grid, axis=1)
    seconds = (first + np.arange(count) * size) * step_s
    return seconds.astype(np.float64), out


def _times(start: datetime, seconds: NDArray[np.float64]) -> NDArray[np.float64]:
    """Matplotlib date numbers of ``seconds`` after ``start``."""
    base = _num(start)
    out: NDArray[np.float64] = base + seconds / 86_400.0
    return out


def _num(moment: datetime) -> float:
    """Matplotlib's date number of ``moment`` (days since its default epoch, 1970-01-01 UTC)."""
    return (moment - _EPOCH).total_seconds() / 86_400.0


def _time_axis(ax: Axes, start: datetime, lo: int, hi: int, zone: ZoneInfo) -> None:
    """Time ticks over seconds ``[lo, hi)`` after ``start`` that stay readable from one hour to two
    weeks: days (with 6-hour minor ticks), hours, or minutes, on whole clock values in ``zone`` (the
    zone the report's tables use; its offset at ``lo`` is assumed for the whole span)."""
    span = hi - lo
    if span > 8 * 86_400:
        # Two weeks of "Mon 01 Jan" labels run into each other at this width.
        every, minor, fmt = 86_400, 6 * 3_600, "%a\n%d %b"
    elif span > 2 * 86_400:
        every, minor, fmt = 86_400, 6 * 3_600, "%a %d %b"
    elif span > 3 * 3_600:
        every, minor, fmt = 3_600 * max(1, span // (12 * 3_600)), 0, "%H:%M"
    else:
        every, minor, fmt = 60 * max(1, span // (8 * 60)), 0, "%H:%M"
    first = (start + timedelta(seconds=lo)).astimezone(zone)
    offset = first.utcoffset() or timedelta(0)
    into = int((first - _EPOCH + offset).total_seconds())

    def marks(step: int) -> list[datetime]:
        t = lo + (-into) % step
        out = []
        while t <= hi:
            out.append((start + timedelta(seconds=t)).astimezone(zone))
            t += step
        return out

    major = marks(every)
    ax.set_xticks([_num(m) for m in major], [f"{m:{fmt}}" for m in major])
    if minor:
        ax.set_xticks([_num(m) for m in marks(minor)], minor=True)
        ax.grid(True, which="minor", color="#f1f3f5")
    ax.set_xlabel(f"time ({zone.key})")


def _scoped_ids(svg: str, prefix: str) -> str:
    """Every ``id`` in ``svg`` renamed ``<prefix>-<n>`` in order of appearance, references too.

    Several SVGs inline in one page share one id space, so matplotlib's ids (``patch_1``, clip-path
    hashes) would collide; and a clip path's id can hash an object's address, which changes between
    runs. Numbering by order of appearance makes them unique in the page and the same every run.
    """
    names: dict[str, str] = {}
    for found in re.findall(r'\sid="([^"]+)"', svg):
        names.setdefault(found, f"{prefix}-{len(names)}")

    def rename(match: re.Match[str]) -> str:
        head, name, tail = match.group(1), match.group(2), match.group(3)
        return f"{head}{names.get(name, name)}{tail}"

    svg = re.sub(r'(\sid=")([^"]+)(")', rename, svg)
    svg = re.sub(r"(url\(#)([^)]+)(\))", rename, svg)
    return re.sub(r'(href="#)([^"]+)(")', rename, svg)


def to_svg(fig: Figure, prefix: str = "fig") -> str:
    """``fig`` as an inline ``<svg>`` element (no XML prolog, ids scoped by ``prefix``), deterministic."""
    buffer = io.StringIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    svg = text[text.index("<svg"):]
    # The RDF metadata names outside vocabularies by URL; the page keeps nothing that points out.
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, count=1, flags=re.DOTALL)
    # Inline SVGs scale with the page: the width and height attributes become the viewBox's ratio.
    svg = re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 class="figure"', svg, count=1)
    return _scoped_ids(svg, prefix)


def _figure(
    rows: int, height_in: float, *, ratios: Sequence[float] | None = None
) -> tuple[Figure, list[Axes]]:
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(_WIDTH_IN, height_in), layout="constrained")
        axes = fig.subplots(rows, 1, sharex=True, squeeze=False,
                            gridspec_kw={"height_ratios": list(ratios)} if ratios else None)
    return fig, [a for row in axes for a in row]


def timeline(
    *,
    title: str,
    start: datetime,
    lo: int,
    hi: int,
    demand: NDArray[np.int64],
    capacity: Sequence[Line],
    waiting: Sequence[Line],
    states: Sequence[tuple[str, Line, Line, Line]] = (),
    difference: Sequence[Line] = (),
    ceiling: int | None = None,
    parts: int = 1_500,
    zone: str = "UTC",
    prefix: str = "timeline",
) -> str:
    """Demand against each schedule's ready capacity, the waiting streams, optionally the capacity's
    difference from the first schedule and each schedule's nodes by state, over seconds ``[lo, hi)``."""
    rows = 2 + (1 if difference else 0) + len(states)
    ratios = [2.2, 1.2] + ([1.0] if difference else []) + [1.0] * len(states)
    fig, axes = _figure(rows, 1.55 * sum(ratios) + 0.6, ratios=ratios)
    with matplotlib.rc_context(_RC):
        fig.suptitle(title, fontsize=11, fontweight="bold")
        ax = axes[0]
        x, y = bucket(demand, lo, hi, parts, "max")
        ax.fill_between(_times(start, x), y, step="post", color="#d1d5db", alpha=0.7, linewidth=0)
        ax.step(_times(start, x), y, where="post", color="#111827", linewidth=1.0, label="demand (streams)")
        for index, line in enumerate(capacity):
            x, y = bucket(line.values, lo, hi, parts, line.reduce, line.step_s)
            ax.step(_times(start, x), y, where="post", linewidth=1.5, label=line.label, **style(index))
        # max_nodes × C far above everything drawn would squash the lines into the bottom of the panel.
        if ceiling is not None and ceiling <= 1.5 * max(ax.get_ylim()[1], 1.0):
            ax.axhline(ceiling, color="#6b7280", linewidth=0.8, linestyle=(0, (2, 2)),
                       label=f"max_nodes × C = {ceiling}")
        ax.set_ylabel("streams")
        ax.set_ylim(bottom=0)
        ax.set_title("Demand (grey, highest in each interval) against ready capacity (lowest)", loc="left")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax = axes[1]
        for index, line in enumerate(waiting):
            x, y = bucket(line.values, lo, hi, parts, "max", line.step_s)
            ax.step(_times(start, x), y, where="post", linewidth=1.3, label=line.label, **style(index))
        ax.set_ylabel("streams waiting")
        ax.set_ylim(bottom=0)
        ax.set_title("Waiting streams (the most at any second of each interval)", loc="left")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        row = 2
        if difference:
            ax = axes[row]
            ax.axhline(0, color="#111827", linewidth=0.8)
            for index, line in enumerate(difference, start=1):
                x, y = bucket(line.values, lo, hi, parts, "mean", line.step_s)
                ax.step(_times(start, x), y, where="post", linewidth=1.3, label=line.label, **style(index))
            ax.set_ylabel("streams")
            reference = capacity[0].label.removeprefix("ready capacity: ")
            ax.set_title(f"Ready capacity minus {reference}'s (mean of each interval)", loc="left")
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
            row += 1
        for label, ready, booting, draining in states:
            ax = axes[row]
            xs, ys = [], []
            for line in (ready, booting, draining):
                x, y = bucket(line.values, lo, hi, parts, "mean", line.step_s)
                xs.append(_times(start, x))
                ys.append(np.nan_to_num(y))
            size = min(len(v) for v in ys)
            ax.stackplot(xs[0][:size], *[v[:size] for v in ys], step="post",
                         colors=[STATE_COLORS["serving"], STATE_COLORS["booting"], STATE_COLORS["draining"]],
                         labels=["serving", "booting", "draining"], alpha=0.9)
            ax.set_ylabel("nodes")
            ax.set_title(f"Nodes by state: {label} (mean of each interval)", loc="left")
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
            row += 1
        end = start + timedelta(seconds=hi)
        axes[-1].set_xlim(_num(start + timedelta(seconds=lo)), _num(end))
        _time_axis(axes[-1], start, lo, hi, ZoneInfo(zone))
    return to_svg(fig, prefix)


def day_strips(
    *,
    title: str,
    start: datetime,
    days: Sequence[tuple[str, int, int, float]],
    demand: NDArray[np.int64],
    capacity: Line,
    unmet: NDArray[np.int64],
    parts: int = 720,
    prefix: str = "days",
) -> str:
    """One row per day (label, first second, length, hour of day it starts at), all on one streams
    scale and one 24-hour axis:
    demand, ready capacity and, in red, where demand was above it. Readable for 7 or 14 days."""
    rows = max(1, len(days))
    fig, axes = _figure(rows, 0.85 * rows + 0.8)
    highest = max(int(demand.max()) if len(demand) else 1,
                  int(np.max(capacity.values)) if len(capacity.values) else 1)
    top = float(highest) * 1.05
    with matplotlib.rc_context(_RC):
        fig.suptitle(title, fontsize=11, fontweight="bold")
        for ax, (label, lo, length, shift) in zip(axes, days, strict=False):
            hi = lo + length
            # Hours since the day's midnight on x, so every row shares one 24-hour axis.
            x, d = bucket(demand, lo, hi, parts, "max")
            hours = (x - lo) / 3_600 + shift
            _, c = bucket(capacity.values, lo, hi, parts, capacity.reduce, capacity.step_s)
            _, u = bucket(unmet, lo, hi, parts, "max")
            ax.fill_between(hours, d, step="post", color="#d1d5db", linewidth=0)
            ax.step(hours, c[: len(hours)], where="post", linewidth=1.2, **style(0))
            ax.fill_between(hours, u, step="post", color="#dc2626", linewidth=0)
            ax.set_ylim(0, top)
            ax.set_xlim(0, 24)
            ax.set_xticks(range(0, 25, 3))
            ax.set_yticks([0, round(top / 2)])
            ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        axes[-1].set_xlabel("hour of day")
        handles: list[Artist] = [
            Patch(color="#d1d5db", label="demand (streams)"),
            Line2D([], [], linewidth=1.2, label=f"ready capacity: {capacity.label}", **style(0)),
            Patch(color="#dc2626", label="streams waiting"),
        ]
        placing: dict[str, Any] = {"bbox_to_anchor": (0.0, 1.02), "ncols": 3}
        axes[0].legend(handles=handles, loc="lower left", **placing)
    return to_svg(fig, prefix)
