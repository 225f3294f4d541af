"""Plain-text rendering of a decision's reason trail, for ``autoscaler explain`` and logs.

The renderer only formats what the engine put in each ``Reason``; it computes nothing, so the text
and the stored JSON trail can never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autoscaler.domain import Decision, Reason

_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("checks", ("check",)),
    ("fallbacks", ("fallback",)),
    ("look-ahead and forecast", ("look-ahead", "forecast")),
    ("windows, cooldowns and rate limits", ("window", "cooldown", "rate")),
    ("bounds", ("schedule", "bound", "capacity")),
    ("victims", ("victim",)),
)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _check_line(reason: Reason) -> list[str]:
    detail: Mapping[str, Any] = reason.detail
    vote = str(detail.get("vote", "?"))
    value = detail.get("value")
    shown = "no data" if value is None else _number(value)
    lines = [f"  {reason.name:<16} {vote:<5} value {shown:<10} → {detail.get('recommendation', '?')}"]
    lines.append(f"      {reason.message}")
    query = detail.get("query")
    if query:
        lines.append(f"      query: {query}")
    return lines


def render_reasons(decision: Decision) -> str:
    """The decision and every step of its trail as indented text, one section per kind of step.

    Sections: the pool's counts, each check's vote (with query and value), fallbacks, look-ahead and
    forecast floor, windows/cooldowns/rate limits, bounds (schedules, min/max, launch caps), victims,
    and the final line.
    Empty sections are left out.
    """
    head = (
        f"pool {decision.pool} at {decision.at.isoformat()}: ready {decision.ready}, booting "
        f"{decision.booting}, draining {decision.draining} → desired {decision.desired}"
    )
    moves = []
    if decision.launch:
        moves.append(f"launch {decision.launch}")
    if decision.victims:
        moves.append(f"drain {', '.join(decision.victims)}")
    lines = [head + (f" ({'; '.join(moves)})" if moves else " (no move)")]
    for title, kinds in _SECTIONS:
        chosen = [r for r in decision.reasons if r.kind in kinds]
        if not chosen:
            continue
        lines.append(f"{title}:")
        for reason in chosen:
            if reason.kind == "check":
                lines.extend(_check_line(reason))
            else:
                lines.append(f"  [{reason.kind}] {reason.name}: {reason.message}")
    known = {kind for _, kinds in _SECTIONS for kind in kinds} | {"final"}
    others = [r for r in decision.reasons if r.kind not in known]
    if others:
        lines.append("other:")
        lines.extend(f"  [{r.kind}] {r.name}: {r.message}" for r in others)
    final = [r for r in decision.reasons if r.kind == "final"]
    lines.extend(f"final: {r.message}" for r in final)
    return "\n".join(lines)
