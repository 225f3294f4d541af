"""A page comparing a shadow-mode controller with the fleet it watched: what it would have run
against what the fleet really ran, tick by tick, with the node-hours of each.

Rendered from ``history``'s rows (the store's shadow ticks, with the provider's real node count
recorded beside each decision) through the dry-run report's template environment and plotting
helpers, so an operator can judge a week of shadow decisions before letting the controller act.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from autoscaler.simulate.plots import COLORS, DASHES, _figure, to_svg
from autoscaler.simulate.report import _templates
from autoscaler.terminal import shadow_ticks


def _step_figure(pool: str, rows: Sequence[dict[str, Any]]) -> str:
    """Shadow's wanted count and the real count as steps over time, one pool."""
    start = datetime.fromisoformat(rows[0]["at"])
    hours = [(datetime.fromisoformat(r["at"]) - start).total_seconds() / 3600 for r in rows]
    fig, (ax,) = _figure(1, 3.2)
    for index, (key, label) in enumerate((("real_nodes", "real fleet"), ("desired", "shadow wanted"))):
        ax.step(hours, [r[key] for r in rows], where="post", label=label, color=COLORS[index],
                linestyle=DASHES[index], linewidth=1.6)
    ax.set_ylabel("nodes")
    ax.set_title(f"{pool}: nodes the shadow wanted vs the fleet's real nodes")
    ax.set_xlabel(f"hours since {start:%Y-%m-%d %H:%M:%S %Z}")
    ax.legend(loc="upper left")
    return to_svg(fig, prefix=f"shadow-{pool}")


def render_shadow_report(rows: Sequence[dict[str, Any]], summaries: dict[str, dict[str, Any]]) -> str:
    """The HTML page for ``history --report``: per pool, a step chart, the summary and the ticks
    where the shadow differed from the fleet (newest first). Pools without shadow ticks are left out.
    """
    pools = []
    for pool, summary in sorted(summaries.items()):
        shadow = shadow_ticks([r for r in rows if r["pool"] == pool])
        differing = [r for r in reversed(shadow) if r["desired"] != r["real_nodes"]]
        pools.append({"name": pool, "summary": summary, "figure": _step_figure(pool, shadow),
                      "differing": differing[:200], "differing_total": len(differing)})
    return _templates().get_template("shadow.html.j2").render(pools=pools)
