"""A sweep's outputs: every run's figures, the Pareto frontier, the frontier's policy patches, a report.

Layout of ``--out DIR``::

    results.json   every variant × scenario × seed: the policy's figures, the HPA-like baseline's and
                   the oracle's on the same demand, and the ratios to both
    frontier.json  the variants' aggregates and the Pareto frontier, each point with its YAML patch
    frontier/<label>.patch.yaml   the change to the base policy (paste it, or merge with apply_patch)
    frontier/<label>.yaml         the whole base policy with the change applied, comments kept
    report.html    the frontier plotted (cost against waiting and against launches) and tabulated

How runs combine (``aggregate`` in the sweep file), per variant over all its scenarios and seeds:

- ``worst_ratio`` (default): for each objective (cost, violation seconds, launches) the worst ratio
  to the HPA-like baseline replayed on the same demand (same scenario, same seed). The baseline is
  the yardstick the issue states its goal in ("no more cost, half the waiting, a third of the
  launches, on every seed"); ratios make a 14-day and a 7-day trace count alike, and the worst case
  keeps a variant from buying one seed's win with another's loss. A ratio with a zero baseline is
  1 when the variant is zero too, else infinite (``null`` in JSON).
- ``sum``: totals over every scenario and seed (dollars, seconds, launches).

A variant is on the frontier when no other variant is at least as good on all three objectives and
better on one (all three are minimised). Only variants whose every run finished are ranked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from autoscaler.errors import ScenarioError
from autoscaler.simulate.report import _CSS
from autoscaler.simulate.sweep import Sweep, Variant, dump_yaml, patched_policy_text

#: The per-run figures kept from each replay's summary (policy and HPA-like baseline alike).
RUN_FIELDS = (
    "cost",
    "node_seconds",
    "violation_seconds",
    "unmet_stream_seconds",
    "launches",
    "terminations",
    "peak_nodes",
    "cost_ratio",
)
OBJECTIVES = ("cost", "violation_seconds", "launches")
#: The issue's goal against the HPA-like baseline, on every run: cost, waiting, launches at most × these.
GOAL = {"cost": 1.0, "violation_seconds": 0.5, "launches": 1 / 3}


def pareto_front(points: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Mask of the non-dominated rows of ``points`` (n × k, every column minimised).

    Row i is dominated when some row j is ≤ in every column and < in one. Equal rows do not
    dominate each other, so duplicates of a frontier point are all on it. O(n²·k), vectorised per row.
    """
    values = np.asarray(points, dtype=np.float64)
    n = len(values)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        no_worse = np.all(values <= values[i], axis=1)
        better = np.any(values < values[i], axis=1)
        if np.any(no_worse & better):
            keep[i] = False
    return keep


def ratio(value: float, baseline: float) -> float:
    """``value / baseline``; with a zero baseline, 1 when the value is zero too, else infinity."""
    if baseline > 0:
        return value / baseline
    return 1.0 if value == 0 else math.inf


@dataclass(frozen=True)
class Point:
    """One variant's aggregate over its finished runs."""

    variant: Variant
    runs: int
    complete: bool
    sums: dict[str, float]
    hpa_sums: dict[str, float]
    worst_vs_hpa: dict[str, float]
    cost_ratio_oracle: dict[str, float]  # worst and mean over runs
    meets_goal: bool

    def objectives(self, mode: str) -> tuple[float, float, float]:
        """(cost, waiting, launches) as the frontier ranks them."""
        source = self.worst_vs_hpa if mode == "worst_ratio" else self.sums
        return (source["cost"], source["violation_seconds"], source["launches"])


def run_record(raw: Mapping[str, Any]) -> dict[str, Any]:
    """One row of ``results.json`` from a worker's raw result."""
    figures = raw["figures"]
    hpa = raw["hpa_like"]
    row: dict[str, Any] = {"variant": raw["variant"], "scenario": raw["scenario"], "seed": raw["seed"]}
    row |= {k: figures[k] for k in RUN_FIELDS}
    row["hpa_like"] = {k: hpa[k] for k in RUN_FIELDS} | {"targets": hpa.get("targets", {})}
    row["vs_hpa_like"] = {k: ratio(float(figures[k]), float(hpa[k])) for k in OBJECTIVES}
    row["oracle"] = raw["oracle"]
    # Wall seconds of the run in its worker, and whether it built the demand and the baseline first.
    row["run_s"] = raw["seconds"]
    row["built_demand"] = raw["built_demand"]
    return row


def aggregate(sweep: Sweep, rows: Sequence[Mapping[str, Any]]) -> list[Point]:
    """Each variant's ``Point`` over its rows of ``results.json``, in the sweep's variant order."""
    by_variant: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    expected = len(sweep.runs)
    points = []
    for variant in sweep.variants:
        mine = by_variant.get(variant.label, [])
        if not mine:
            continue
        sums = {
            k: float(sum(r[k] for r in mine))
            for k in ("cost", *OBJECTIVES[1:], "unmet_stream_seconds", "node_seconds")
        }
        hpa_sums = {k: float(sum(r["hpa_like"][k] for r in mine)) for k in sums}
        worst = {k: max(r["vs_hpa_like"][k] for r in mine) for k in OBJECTIVES}
        oracle_ratios = [float(r["cost_ratio"]) for r in mine if r["cost_ratio"] is not None]
        meets = all(float(r[k]) <= GOAL[k] * float(r["hpa_like"][k]) for r in mine for k in OBJECTIVES)
        points.append(
            Point(
                variant=variant,
                runs=len(mine),
                complete=len(mine) == expected,
                sums=sums,
                hpa_sums=hpa_sums,
                worst_vs_hpa=worst,
                cost_ratio_oracle={
                    "worst": max(oracle_ratios, default=math.nan),
                    "mean": float(np.mean(oracle_ratios)) if oracle_ratios else math.nan,
                },
                meets_goal=meets,
            )
        )
    return points


def frontier(points: Sequence[Point], mode: str) -> list[Point]:
    """The Pareto frontier of the complete points, cheapest first."""
    ranked = [p for p in points if p.complete]
    if not ranked:
        return []
    mask = pareto_front(np.array([p.objectives(mode) for p in ranked], dtype=np.float64))
    front = [p for p, keep in zip(ranked, mask, strict=True) if keep]
    return sorted(front, key=lambda p: (p.objectives(mode), p.variant.label))


def _finite(value: Any) -> Any:
    """JSON has no infinity or NaN: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _json(data: Any) -> str:
    return json.dumps(_finite(data), indent=2, ensure_ascii=False) + "\n"


def _patches(sweep: Sweep, variant: Variant) -> dict[Path, dict[str, Any]]:
    return {path: sweep.patch(variant, base) for path, base in sweep.bases.items()}


def _point_json(sweep: Sweep, point: Point, mode: str, on_front: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "variant": point.variant.label,
        "parameters": point.variant.assignment,
        "is_base": point.variant.is_base,
        "runs": point.runs,
        "complete": point.complete,
        "objectives": dict(zip(("cost", "waiting", "launches"), point.objectives(mode), strict=True)),
        "worst_vs_hpa_like": point.worst_vs_hpa,
        "sums": point.sums,
        "hpa_like_sums": point.hpa_sums,
        "cost_ratio_oracle": point.cost_ratio_oracle,
        "meets_goal": point.meets_goal,
    }
    if on_front:
        patches = _patches(sweep, point.variant)
        texts = {str(path): dump_yaml(patch) if patch else "{}\n" for path, patch in patches.items()}
        out["patch"] = next(iter(texts.values()))
        if len(texts) > 1:
            out["patch_by_policy"] = texts
    return out


def write_sweep_outputs(
    sweep: Sweep,
    raw_results: Sequence[Mapping[str, Any]],
    out: Path,
    *,
    interrupted: bool,
    total: int,
    elapsed_s: float,
    jobs: int,
) -> tuple[list[Path], list[Point], list[Point]]:
    """Write results.json, frontier.json, the frontier's patches and report.html into ``out``.

    Returns the files written, all points and the frontier. Raises ``ScenarioError`` when ``out``
    cannot be written.
    """
    order = {v.label: i for i, v in enumerate(sweep.variants)}
    rows = sorted(
        (run_record(r) for r in raw_results), key=lambda r: (order[r["variant"]], r["scenario"], r["seed"])
    )
    mode = sweep.spec.aggregate
    points = aggregate(sweep, rows)
    front = frontier(points, mode)
    header = {
        "sweep": str(sweep.source),
        "name": sweep.name,
        "aggregate": mode,
        "complete": not interrupted and len(rows) == total,
        "interrupted": interrupted,
        "runs_done": len(rows),
        "runs_total": total,
        "elapsed_s": round(elapsed_s, 1),
        "workers": jobs,
        "scenarios": sorted({f"{s.name}" for s, _ in sweep.runs}),
        "seeds": sorted({s.spec.seed for s, _ in sweep.runs}),
        "parameters": {
            name: {"path": p.path, "line": sweep.lines[name]} for name, p in sweep.spec.parameters.items()
        },
        "base_policies": [str(p) for p in sweep.bases],
    }
    written: list[Path] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        variants = [
            {"label": v.label, "parameters": v.assignment, "is_base": v.is_base} for v in sweep.variants
        ]
        results = header | {"variants": variants, "runs": rows}
        (out / "results.json").write_text(_json(results), encoding="utf-8")
        written.append(out / "results.json")
        frontier_doc = header | {
            "frontier": [_point_json(sweep, p, mode, True) for p in front],
            "variants": [_point_json(sweep, p, mode, False) for p in points],
        }
        (out / "frontier.json").write_text(_json(frontier_doc), encoding="utf-8")
        written.append(out / "frontier.json")
        folder = out / "frontier"
        folder.mkdir(exist_ok=True)
        for stale in folder.glob("*.yaml"):  # an earlier sweep's frontier into the same folder
            stale.unlink()
        for point in front:
            for path, patch in _patches(sweep, point.variant).items():
                stem = point.variant.label if len(sweep.bases) == 1 else f"{point.variant.label}.{path.stem}"
                (folder / f"{stem}.patch.yaml").write_text(
                    dump_yaml(patch) if patch else "{}\n", encoding="utf-8"
                )
                (folder / f"{stem}.yaml").write_text(patched_policy_text(path, patch), encoding="utf-8")
                written += [folder / f"{stem}.patch.yaml", folder / f"{stem}.yaml"]
        (out / "report.html").write_text(
            render_sweep_html(sweep, points, front, mode, header), encoding="utf-8"
        )
        written.append(out / "report.html")
    except OSError as exc:
        raise ScenarioError(f"{out}: cannot write the sweep's results: {exc.strerror or exc}") from exc
    return written, points, front


# ------------------------------------------------------------------------------------------- table
def _num(value: float, digits: int = 3) -> str:
    if not math.isfinite(value):
        return "inf" if value > 0 else "–"
    return f"{value:,.{digits}f}"


def table_rows(
    sweep: Sweep, points: Sequence[Point], front: Sequence[Point]
) -> tuple[list[str], list[list[str]]]:
    """The frontier table's header and rows (the base and HPA-like sums as reference rows)."""
    names = list(sweep.spec.parameters)
    header = [
        "variant",
        *names,
        "cost÷HPA",
        "wait÷HPA",
        "launch÷HPA",
        "cost÷oracle",
        "Σ cost",
        "Σ violation s",
        "Σ launches",
        "goal",
    ]
    rows: list[list[str]] = []
    shown = list(front)
    base = next((p for p in points if p.variant.is_base and p.complete), None)
    if base is not None and base not in shown:
        shown.append(base)
    for p in shown:
        label = p.variant.label + (" (base)" if p.variant.is_base and p.variant.label != "base" else "")
        if p not in front:
            label += " [not on frontier]"
        rows.append(
            [
                label,
                *[str(p.variant.assignment.get(n, "·")) for n in names],
                _num(p.worst_vs_hpa["cost"]),
                _num(p.worst_vs_hpa["violation_seconds"]),
                _num(p.worst_vs_hpa["launches"]),
                _num(p.cost_ratio_oracle["worst"]),
                _num(p.sums["cost"], 2),
                f"{p.sums['violation_seconds']:,.0f}",
                f"{p.sums['launches']:,.0f}",
                "yes" if p.meets_goal else "no",
            ]
        )
    if points:
        h = points[0].hpa_sums
        rows.append(
            [
                "hpa_like",
                *["" for _ in names],
                "1.000",
                "1.000",
                "1.000",
                "",
                _num(h["cost"], 2),
                f"{h['violation_seconds']:,.0f}",
                f"{h['launches']:,.0f}",
                "",
            ]
        )
    return header, rows


# -------------------------------------------------------------------------------------------- html
_W, _H, _LEFT, _RIGHT, _TOP, _BOTTOM = 460, 320, 62, 14, 14, 44


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]: steps of 1, 2, 2.5 or 5 × a power of ten."""
    if not high > low:
        high = low + 1.0
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(f * power for f in (1, 2, 2.5, 5, 10) if raw <= f * power)
    start = math.floor(low / step) * step
    ticks = [start]
    while ticks[-1] < high - 1e-12:
        ticks.append(ticks[-1] + step)
    return [float(f"{t:.10g}") for t in ticks]


#: Frontier and base points are labelled when there are at most this many (else only on hover).
_LABELLED = 12


def scatter(
    title: str,
    points: Sequence[tuple[float, float, str, str]],
    *,
    x_label: str,
    y_label: str,
    reference: tuple[float, float] | None = None,
) -> str:
    """An inline ``<svg>`` scatter of (x, y, label, kind) points; kind is ``front``, ``base`` or ``other``.

    Infinite values are drawn at the top/right edge. ``reference`` draws dashed lines through a point
    (the HPA-like baseline).
    """
    xs = [p[0] for p in points] + ([reference[0]] if reference else [])
    ys = [p[1] for p in points] + ([reference[1]] if reference else [])
    finite_x = [v for v in xs if math.isfinite(v)] or [0.0, 1.0]
    finite_y = [v for v in ys if math.isfinite(v)] or [0.0, 1.0]
    x_ticks = _nice_ticks(min(finite_x), max(finite_x))
    y_ticks = _nice_ticks(0.0, max(finite_y))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def px(v: float) -> float:
        v = min(v, x1) if math.isfinite(v) else x1
        return _LEFT + plot_w * ((v - x0) / (x1 - x0))

    def py(v: float) -> float:
        v = min(v, y1) if math.isfinite(v) else y1
        return _TOP + plot_h * (1 - (v - y0) / (y1 - y0))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" role="img" '
        f'aria-label="{escape(title)}" class="chart scatter">',
        f"<title>{escape(title)}</title>",
    ]
    for tick in y_ticks:
        gy = py(tick)
        parts.append(f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{gy:.1f}" y2="{gy:.1f}" class="grid"/>')
        parts.append(f'<text x="{_LEFT - 6}" y="{gy + 4:.1f}" text-anchor="end">{tick:,.6g}</text>')
    for tick in x_ticks:
        gx = px(tick)
        parts.append(f'<line x1="{gx:.1f}" x2="{gx:.1f}" y1="{_TOP}" y2="{_TOP + plot_h}" class="grid"/>')
        parts.append(f'<text x="{gx:.1f}" y="{_TOP + plot_h + 16}" text-anchor="middle">{tick:,.6g}</text>')
    parts.append(
        f'<text x="{_LEFT + plot_w / 2:.0f}" y="{_H - 8}" text-anchor="middle">{escape(x_label)}</text>'
    )
    parts.append(
        f'<text x="14" y="{_TOP + plot_h / 2:.0f}" transform="rotate(-90 14 {_TOP + plot_h / 2:.0f})" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    if reference is not None:
        rx, ry = px(reference[0]), py(reference[1])
        parts.append(
            f'<line x1="{rx:.1f}" x2="{rx:.1f}" y1="{_TOP}" y2="{_TOP + plot_h}" stroke="#9ca3af" '
            'stroke-dasharray="5 4"/>'
        )
        parts.append(
            f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{ry:.1f}" y2="{ry:.1f}" stroke="#9ca3af" '
            'stroke-dasharray="5 4"/>'
        )
        parts.append(f'<text x="{rx + 4:.1f}" y="{_TOP + 12}">HPA-like</text>')
    style = {"other": ("#9ca3af", 3), "base": ("#1f77b4", 5), "front": ("#d62728", 5)}
    labelled = sum(1 for p in points if p[3] != "other") <= _LABELLED
    for kind in ("other", "base", "front"):
        for x, y, label, k in points:
            if k != kind:
                continue
            color, radius = style[kind]
            parts.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="{radius}" fill="{color}" fill-opacity="0.85">'
                f"<title>{escape(label)}: {x:.4g}, {y:.4g}</title></circle>"
            )
            if kind != "other" and labelled:
                parts.append(f'<text x="{px(x) + 7:.1f}" y="{py(y) - 5:.1f}">{escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def render_sweep_html(
    sweep: Sweep, points: Sequence[Point], front: Sequence[Point], mode: str, header: Mapping[str, Any]
) -> str:
    """The sweep's report page: the frontier plotted and tabulated, each point's patch."""
    complete = [p for p in points if p.complete]
    on_front = {p.variant.label for p in front}

    def kind(p: Point) -> str:
        return "front" if p.variant.label in on_front else ("base" if p.variant.is_base else "other")

    if mode == "worst_ratio":
        xs = {p.variant.label: p.worst_vs_hpa["cost"] for p in complete}
        unit = "worst ratio to HPA-like over scenarios and seeds"
        reference: tuple[float, float] | None = (1.0, 1.0)
        x_label = "cost ÷ HPA-like (worst run)"
        wait_label, launch_label = "violation s ÷ HPA-like (worst run)", "launches ÷ HPA-like (worst run)"
    else:
        xs = {p.variant.label: p.sums["cost"] for p in complete}
        unit = "sums over scenarios and seeds"
        h = complete[0].hpa_sums if complete else None
        reference = (h["cost"], h["violation_seconds"]) if h else None
        x_label, wait_label, launch_label = "Σ cost", "Σ violation seconds", "Σ launches"
    charts = ""
    if complete:
        obj = {p.variant.label: p.objectives(mode) for p in complete}
        charts = scatter(
            "cost against waiting",
            [(xs[p.variant.label], obj[p.variant.label][1], p.variant.label, kind(p)) for p in complete],
            x_label=x_label,
            y_label=wait_label,
            reference=reference,
        ) + scatter(
            "cost against launches",
            [(xs[p.variant.label], obj[p.variant.label][2], p.variant.label, kind(p)) for p in complete],
            x_label=x_label,
            y_label=launch_label,
            reference=(1.0, 1.0)
            if mode == "worst_ratio"
            else ((complete[0].hpa_sums["cost"], complete[0].hpa_sums["launches"]) if complete else None),
        )
    head, rows = table_rows(sweep, points, front)
    table = (
        "<table><tr>"
        + "".join(f"<th>{escape(h)}</th>" for h in head)
        + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        + "</table>"
    )
    patches = []
    for p in front:
        for path, patch in _patches(sweep, p.variant).items():
            text = dump_yaml(patch) if patch else "{}  # the base policy itself\n"
            title = p.variant.label + (f" on {path.name}" if len(sweep.bases) > 1 else "")
            patches.append(f"<h3>{escape(title)}</h3><pre>{escape(text)}</pre>")
    params = "".join(
        f"<dt>{escape(n)}</dt><dd><code>{escape(p.path)}</code> (line {sweep.lines[n]})</dd>"
        for n, p in sweep.spec.parameters.items()
    )
    state = (
        f"Interrupted: {header['runs_done']} of {header['runs_total']} runs finished; only variants whose "
        "every run finished are ranked."
        if header["interrupted"]
        else f"{header['runs_done']} runs in {header['elapsed_s']:.0f} s on {header['workers']} workers."
    )
    title = f"Policy sweep: {sweep.name}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{_CSS}
svg.scatter{{width:49%;display:inline-block}}</style></head>
<body><main>
<h1>{escape(title)}</h1>
<p class="lead">{escape(sweep.spec.description or "")} {escape(state)}</p>
<dl><dt>scenarios</dt><dd>{escape(", ".join(header["scenarios"]))}</dd>
<dt>seeds</dt><dd>{escape(", ".join(str(s) for s in header["seeds"]))}</dd>
<dt>base policy</dt><dd>{escape(", ".join(Path(p).name for p in header["base_policies"]))}</dd>
<dt>variants</dt><dd>{len(sweep.variants)} ({escape(sweep.spec.search)})</dd>
<dt>aggregate</dt><dd>{escape(unit)}</dd>{params}</dl>
<h2>Frontier</h2>
<p class="note">Red: the Pareto frontier over cost, waiting (violation seconds) and launches ({escape(unit)}),
all minimised; blue: the base policy; grey: the other variants. Dashed lines: the HPA-like baseline.</p>
{charts}
{table}
<p class="note">Goal (issue 9): on every scenario and seed, cost at most the HPA-like baseline's, violation
seconds at most half, launches at most a third. cost÷oracle: the worst run's cost against the oracle.</p>
<h2>Patches</h2>
<p class="note">Each frontier point's change to the base policy: only the swept keys it changes, in the
policy's structure. List items with a name merge by name; a list addressed by position is given whole.
frontier/&lt;label&gt;.yaml holds the whole patched policy.</p>
{"".join(patches)}
</main></body></html>
"""
