"""The Grafana dashboard of the autoscaler, generated from code with grafanalib.

    .venv/bin/python infra/grafana/dashboard.py > infra/grafana/autoscaler.json

``autoscaler.json`` is committed (import it in Grafana, or provision it); a test regenerates it and
checks it matches, so edit this file, never the JSON. Every query names metrics the controller
exports (``autoscaler_*``) or the nodes export (DCGM GPU memory, ``asr_request_duration_seconds``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from grafanalib._gen import DashboardEncoder
from grafanalib.core import (
    Dashboard,
    GridPos,
    RowPanel,
    Stat,
    Table,
    Target,
    Template,
    Templating,
    TimeSeries,
)

UID = "gpu-autoscaler"
DS = "${datasource}"
POOL = 'pool=~"$pool"'


def _target(expr: str, legend: str = "", ref: str = "A", **extra: Any) -> Target:
    return Target(expr=expr, legendFormat=legend, refId=ref, datasource=DS, **extra)


def _row(title: str, y: int) -> RowPanel:
    return RowPanel(title=title, gridPos=GridPos(h=1, w=24, x=0, y=y))


def dashboard() -> Dashboard:
    """The dashboard: fleet, nodes, users' latency, decisions and their reasons, cost, the controller."""
    panels = [
        _row("Fleet", 0),
        TimeSeries(
            title="Fleet by state",
            description="Nodes by lifecycle after each tick (stacked), with what the last decision wants "
            "and the policy's bounds.",
            dataSource=DS,
            targets=[
                _target(f"sum by (lifecycle) (autoscaler_nodes{{{POOL}}})", "{{lifecycle}}", "A"),
                _target(f"sum(autoscaler_desired_nodes{{{POOL}}})", "desired", "B"),
                _target(f"sum(autoscaler_max_nodes{{{POOL}}})", "max_nodes", "C"),
            ],
            stacking={"mode": "normal", "group": "A"},
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": "desired|max_nodes"},
                    "properties": [
                        {"id": "custom.stacking", "value": {"mode": "none", "group": "B"}},
                        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                        {"id": "custom.fillOpacity", "value": 0},
                    ],
                }
            ],
            fillOpacity=40,
            unit="none",
            gridPos=GridPos(h=9, w=12, x=0, y=1),
        ),
        TimeSeries(
            title="GPU memory by node",
            description="GPU memory used / total per node (DCGM); the gpu-memory check acts above 90 %.",
            dataSource=DS,
            targets=[
                _target(
                    f"max by (instance_id) (DCGM_FI_DEV_FB_USED{{{POOL}}} "
                    f"/ (DCGM_FI_DEV_FB_USED{{{POOL}}} + DCGM_FI_DEV_FB_FREE{{{POOL}}}))",
                    "{{instance_id}}",
                )
            ],
            unit="percentunit",
            valueMin=0,
            valueMax=1,
            gridPos=GridPos(h=9, w=12, x=12, y=1),
        ),
        _row("Users", 10),
        TimeSeries(
            title="p95 latency",
            description="95th percentile of transcription wall time (queueing included), per pool.",
            dataSource=DS,
            targets=[
                _target(
                    "histogram_quantile(0.95, sum by (le, pool) "
                    f"(rate(asr_request_duration_seconds_bucket{{{POOL}}}[5m])))",
                    "{{pool}}",
                )
            ],
            unit="s",
            gridPos=GridPos(h=8, w=12, x=0, y=11),
        ),
        TimeSeries(
            title="Cost per hour",
            description="What the live nodes cost per hour at the policy price_per_hour, in its currency.",
            dataSource=DS,
            targets=[_target(f"sum by (pool) (autoscaler_cost_per_hour{{{POOL}}})", "{{pool}}")],
            stacking={"mode": "normal", "group": "A"},
            fillOpacity=30,
            unit="none",
            gridPos=GridPos(h=8, w=12, x=12, y=11),
        ),
        _row("Decisions", 19),
        TimeSeries(
            title="Decisions",
            description="Scale-out and scale-in decisions per interval (holds left out).",
            dataSource=DS,
            targets=[
                _target(
                    f'sum by (direction) (increase(autoscaler_decisions_total{{{POOL}, direction!="hold"}}'
                    "[$__rate_interval]))",
                    "{{direction}}",
                )
            ],
            drawStyle="bars",
            fillOpacity=80,
            unit="none",
            gridPos=GridPos(h=8, w=12, x=0, y=20),
        ),
        Table(
            title="Reasons behind the decisions",
            description="Which checks, schedules, bounds and windows were in the trail of decisions that "
            "moved the pool, over the time range. `autoscaler history --pool P` has each message.",
            dataSource=DS,
            targets=[
                _target(
                    "sort_desc(sum by (direction, kind, name) "
                    f"(increase(autoscaler_decision_reasons_total{{{POOL}}}[$__range])) > 0)",
                    "",
                    instant=True,
                    format="table",
                )
            ],
            gridPos=GridPos(h=8, w=12, x=12, y=20),
        ),
        _row("Controller", 28),
        Stat(
            title="Seconds since the last successful tick",
            description="Per pool. AutoscalerNoSuccessfulTick fires above 300 s.",
            dataSource=DS,
            targets=[
                _target(
                    f"time() - max by (pool) (autoscaler_last_successful_tick_timestamp_seconds{{{POOL}}})",
                    "{{pool}}",
                )
            ],
            format="s",
            thresholds=[
                {"color": "green", "value": None},
                {"color": "orange", "value": 60},
                {"color": "red", "value": 300},
            ],
            gridPos=GridPos(h=6, w=8, x=0, y=29),
        ),
        TimeSeries(
            title="Tick errors, balancer rejections, boot failures",
            dataSource=DS,
            targets=[
                _target(
                    f'sum by (pool) (increase(autoscaler_ticks_total{{{POOL}, result="error"}}'
                    "[$__rate_interval]))",
                    "{{pool}} tick errors",
                    "A",
                ),
                _target(
                    f"sum by (pool) (increase(autoscaler_balancer_errors_total{{{POOL}}}[$__rate_interval]))",
                    "{{pool}} balancer rejections",
                    "B",
                ),
                _target(
                    f"max by (pool) (autoscaler_boot_failures_in_a_row{{{POOL}}})",
                    "{{pool}} boot failures in a row",
                    "C",
                ),
            ],
            unit="none",
            gridPos=GridPos(h=6, w=8, x=8, y=29),
        ),
        TimeSeries(
            title="Checks without data, paused, shadow",
            description="1 while a check has no data, the pool is paused, or runs in shadow mode.",
            dataSource=DS,
            targets=[
                _target(f"max by (pool, check) (autoscaler_check_missing_data{{{POOL}}})",
                        "{{pool}} {{check}} no data", "A"),
                _target(f"max by (pool) (autoscaler_paused{{{POOL}}})", "{{pool}} paused", "B"),
                _target(f"max by (pool) (autoscaler_shadow{{{POOL}}})", "{{pool}} shadow", "C"),
            ],
            unit="none",
            valueMin=0,
            valueMax=1,
            gridPos=GridPos(h=6, w=8, x=16, y=29),
        ),
    ]
    return Dashboard(
        title="GPU autoscaler",
        uid=UID,
        description="Fleet, users' latency, decisions with their reasons, cost, and the controller's health.",
        tags=["autoscaler", "gpu"],
        timezone="utc",
        refresh="30s",
        panels=panels,
        templating=Templating(
            list=[
                Template(name="datasource", label="Prometheus", query="prometheus", type="datasource"),
                Template(
                    name="pool",
                    label="Pool",
                    dataSource=DS,
                    query="label_values(autoscaler_desired_nodes, pool)",
                    includeAll=True,
                    multi=True,
                    default="$__all",
                ),
            ]
        ),
    ).auto_panel_ids()


def render() -> str:
    """The dashboard as the exact text of ``autoscaler.json``."""
    data = dashboard().to_json_data()
    return json.dumps(data, cls=DashboardEncoder, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
