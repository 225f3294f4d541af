"""What ``status`` and ``history`` print: rich tables on a terminal, plain columns when piped.

The data is built from a store opened read-only (``status_rows``, ``history_rows``); rendering is
``print_table``, which picks rich's box-drawn table only when stdout is a terminal, so scripts and
``grep`` get one plain line per row and no escape codes.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from importlib import metadata
from itertools import pairwise
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

import autoscaler
from autoscaler.domain import Lifecycle
from autoscaler.protocols import Store

#: Lifecycles that are still nodes (a terminated instance is history, not fleet).
LIVE_STATES = (Lifecycle.LAUNCHING, Lifecycle.BOOTING, Lifecycle.SERVING, Lifecycle.DRAINING)


def version() -> str:
    """The installed package's version (the source tree's when not installed)."""
    try:
        return metadata.version("gpu-autoscaler")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return autoscaler.__version__


def final_reason(decision: dict[str, Any]) -> str:
    """The message of the decision's last (``final``) reason, or its summary."""
    reasons = decision.get("reasons") or []
    if reasons:
        return str(reasons[-1].get("message", ""))
    return str(decision.get("summary", ""))


def status_rows(
    store: Store,
    pools: Sequence[str],
    paused: dict[str, bool] | None = None,
    leaders: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One JSON-ready record per pool: nodes by state, the last tick, its decision and reason.

    ``paused`` and ``leaders`` (``leader.leaders``: who holds each pool's lock) come from the caller.
    """
    rows = []
    for pool in pools:
        counts = Counter(state.value for state, _since in store.lifecycles(pool).values())
        last = store.recent_ticks(pool, limit=1)
        tick = last[0] if last else None
        decision = tick["decision"] if tick else {}
        rows.append(
            {
                "pool": pool,
                "nodes": {state.value: counts.get(state.value, 0) for state in LIVE_STATES},
                "last_tick": tick["at"] if tick else None,
                "decision": decision.get("summary") if tick else None,
                "reason": final_reason(decision) if tick else None,
                "error": tick.get("error") if tick else None,
                "paused": bool((paused or {}).get(pool, False)),
                "leader": (leaders or {}).get(pool, "n/a"),
            }
        )
    return rows


def history_rows(ticks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The JSON-ready form of recorded ticks for ``history --json`` (inputs left out: see ``explain``)."""
    return [
        {
            "id": t["id"],
            "pool": t["pool"],
            "at": t["at"],
            "direction": t.get("direction"),
            "desired": t.get("desired"),
            "summary": t["decision"].get("summary", ""),
            "reason": final_reason(t["decision"]),
            "outcome": t["decision"].get("outcome", {}),
            "error": t.get("error"),
            "mode": t["decision"].get("mode", "acting"),
            "real_nodes": t["decision"].get("fleet", {}).get("real_nodes"),
            "plan": t["decision"].get("plan", []),
        }
        for t in ticks
    ]


def shadow_ticks(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The shadow-mode rows that recorded both counts (the shadow's desired and the real fleet's),
    oldest first."""
    return sorted(
        (r for r in rows if r.get("mode") == "shadow" and r.get("real_nodes") is not None
         and r.get("desired") is not None),
        key=lambda r: r["at"],
    )


def shadow_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Shadow against reality over the rows' window: node-hours each, and ticks where the shadow
    wanted more or fewer nodes than the fleet had. None when no row is a shadow tick.

    Each tick stands for the time until the next one (the last, for the median interval): the
    shadow's node-hours are its desired count over that time, the real ones the provider's count.
    """
    shadow = shadow_ticks(rows)
    if not shadow:
        return None
    times = [datetime.fromisoformat(r["at"]) for r in shadow]
    gaps = [(b - a).total_seconds() for a, b in pairwise(times)]
    last = sorted(gaps)[len(gaps) // 2] if gaps else 0.0
    spans = [*gaps, last]
    real_h = sum(r["real_nodes"] * dt for r, dt in zip(shadow, spans, strict=True)) / 3600
    shadow_h = sum(r["desired"] * dt for r, dt in zip(shadow, spans, strict=True)) / 3600
    return {
        "ticks": len(shadow),
        "from": shadow[0]["at"],
        "to": shadow[-1]["at"],
        "node_hours_real": round(real_h, 3),
        "node_hours_shadow": round(shadow_h, 3),
        "ticks_shadow_wanted_more": sum(1 for r in shadow if r["desired"] > r["real_nodes"]),
        "ticks_shadow_wanted_fewer": sum(1 for r in shadow if r["desired"] < r["real_nodes"]),
        "ticks_same": sum(1 for r in shadow if r["desired"] == r["real_nodes"]),
    }


def shadow_summary_line(summary: dict[str, Any]) -> str:
    """``shadow over N ticks: ...`` for the foot of ``history``."""
    return (
        f"shadow over {summary['ticks']} ticks "
        f"({_short_time(summary['from'])} to {_short_time(summary['to'])}): "
        f"{summary['node_hours_shadow']:.2f} node-hours wanted vs {summary['node_hours_real']:.2f} real; "
        f"wanted more in {summary['ticks_shadow_wanted_more']} ticks, fewer in "
        f"{summary['ticks_shadow_wanted_fewer']}, the same in {summary['ticks_same']}"
    )


def _short_time(iso: str | None) -> str:
    if not iso:
        return "-"
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S")


def status_table(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Columns and cells of ``status``."""
    columns = ["pool", "nodes", "last tick", "decision", "reason", "paused", "leader"]
    cells = []
    for row in rows:
        nodes = ", ".join(f"{n} {state}" for state, n in row["nodes"].items() if n) or "none"
        reason = row["reason"] or "-"
        if row["error"]:
            reason = f"{reason} [error: {row['error']}]"
        cells.append(
            [
                row["pool"],
                nodes,
                _short_time(row["last_tick"]),
                (row["decision"] or "-").split(" (", maxsplit=1)[0],  # "out 2→3"; the reason follows
                reason,
                "yes" if row["paused"] else "no",
                row["leader"],
            ]
        )
    return columns, cells


def history_table(
    rows: Sequence[dict[str, Any]], *, with_pool: bool = False
) -> tuple[list[str], list[list[str]]]:
    """Columns and cells of ``history`` (a pool column when several pools are shown)."""
    if any(r.get("mode") == "shadow" for r in rows):
        # Shadow ticks: what it wanted beside the real fleet's size, and what it would have done.
        columns = ["at", "tick", "shadow wants", "real nodes", "decision", "would do", "error"]
        cells = [
            [
                _short_time(r["at"]),
                f"#{r['id']}",
                "-" if r.get("desired") is None else str(r["desired"]),
                "-" if r.get("real_nodes") is None else str(r["real_nodes"]),
                r["summary"],
                _would_do(r.get("plan", [])),
                r["error"] or "",
            ]
            for r in rows
        ]
        if with_pool:
            columns.insert(0, "pool")
            for row, cell in zip(rows, cells, strict=True):
                cell.insert(0, str(row["pool"]))
        return columns, cells
    columns = ["at", "tick", "decision", "error"]
    cells = [[_short_time(r["at"]), f"#{r['id']}", r["summary"], r["error"] or ""] for r in rows]
    if with_pool:
        columns.insert(0, "pool")
        for row, cell in zip(rows, cells, strict=True):
            cell.insert(0, str(row["pool"]))
    return columns, cells


def _would_do(plan: Sequence[dict[str, Any]]) -> str:
    """``launch 2, terminate i-1``: a plan's changes (the balancer step only when someone leaves)."""
    parts = []
    for step in plan:
        if step["kind"] == "launch":
            parts.append(f"launch {step['count']}")
        elif step["kind"] == "balancer":
            if step.get("leaving"):
                parts.append(f"drain {', '.join(step['leaving'])}")
        else:
            parts.append(f"{step['kind']} {', '.join(step['ids'])}")
    return ", ".join(parts) or "nothing"


def print_table(
    columns: Sequence[str],
    cells: Sequence[Sequence[str]],
    *,
    file: TextIO | None = None,
    terminal: bool | None = None,
) -> None:
    """A rich table when ``file`` (stdout) is a terminal; otherwise plain, space-aligned columns.

    ``terminal`` overrides the detection (tests).
    """
    out = file or sys.stdout
    is_terminal = out.isatty() if terminal is None else terminal
    if is_terminal:
        table = Table(*columns, show_lines=False, header_style="bold")
        for row in cells:
            table.add_row(*row)
        Console(file=out, force_terminal=True, soft_wrap=False).print(table)
        return
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = [columns, *cells]
    for line in lines:
        out.write("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() + "\n")
