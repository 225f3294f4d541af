"""``autoscaler dry-run``: replay demand through a policy and write the report.

``register(app)`` adds the command to the main Typer app (``autoscaler.cli``)::

    autoscaler dry-run --scenario scenarios/twitter-7d.yaml --out out/twitter
    autoscaler dry-run --scenario scenarios/twitter-7d.yaml --out out/cmp \\
        --compare policies/asr-aws.yaml policies/hpa-like.yaml
    autoscaler dry-run --sweep scenarios/sweep-asr.yaml --out out/sweep     # the policy tuner

Every failure the operator can cause (a missing or malformed scenario, trace or policy, a window
outside the trace, an unwritable folder, an unreachable Prometheus) prints ``error: ...`` and exits
with status 2, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from autoscaler.errors import AutoscalerError
from autoscaler.simulate.recommend import duration_text, money
from autoscaler.simulate.run import dry_run
from autoscaler.simulate.scenario import load_scenario

#: Replays with at least this many ticks show a progress bar (when stderr is a terminal).
PROGRESS_MIN_TICKS = 5_000


def register(app: typer.Typer) -> None:
    """Add the ``dry-run`` command to ``app``."""

    @app.command("dry-run")
    def dry_run_command(
        out: Annotated[
            Path,
            typer.Option(
                "--out",
                "-o",
                help="Folder for report.html, summary.json and timeline.csv (created if missing).",
                show_default=False,
            ),
        ],
        scenario: Annotated[
            Path | None,
            typer.Option("--scenario", "-s", help="The scenario file (YAML).", show_default=False),
        ] = None,
        compare: Annotated[
            bool,
            typer.Option(
                "--compare",
                help="Replay each POLICIES file on the scenario's "
                "demand, side by side, instead of the scenario's policy.",
            ),
        ] = False,
        policies: Annotated[
            list[Path] | None, typer.Argument(help="Policy files for --compare.", show_default=False)
        ] = None,
        sweep: Annotated[
            Path | None,
            typer.Option(
                "--sweep",
                help="Tune instead: replay every variant of the sweep file's parameters on its scenarios "
                "and seeds, on all cores, and write the Pareto frontier (docs/dry-run.md).",
                show_default=False,
            ),
        ] = None,
        jobs: Annotated[
            int | None,
            typer.Option("--jobs", "-j", min=1, help="--sweep: worker processes (default: every core)."),
        ] = None,
        warm_sizes: Annotated[
            str | None,
            typer.Option(
                "--warm-sizes",
                help="Comma-separated warm pool sizes to replay the scenario's policy with (the "
                "cost/waiting frontier and the recommended size), e.g. 0,1,2,4. Default: 0,1,2,4 "
                "when the policy says warm_pool.size: auto, else none.",
            ),
        ] = None,
        options: Annotated[
            bool,
            typer.Option(
                "--options/--no-options",
                help="When the policy let demand wait, replay three risk options (a floor on the waiting "
                "hours, more headroom, a bigger warm pool) and report what each costs and removes.",
            ),
        ] = True,
    ) -> None:
        """Replay a scenario's demand through the policy's decision engine against a simulated fleet.

        Writes report.html (what users would have seen: waits, queues and cut transcriptions per day
        and hour; plots of the whole window, its worst day and hour; the summary against static-peak,
        HPA-like and oracle baselines; recommendations with measured risk options), summary.json and
        timeline.csv. Exit status 2 on any error.
        """
        if sweep is not None:
            if scenario is not None or compare or policies:
                typer.echo(
                    "error: --sweep names its scenarios in the sweep file; drop --scenario/--compare",
                    err=True,
                )
                raise typer.Exit(code=2)
            from autoscaler.simulate.sweep_run import run_sweep

            raise typer.Exit(code=run_sweep(sweep, out, jobs=jobs, echo=typer.echo))
        if scenario is None:
            typer.echo("error: give --scenario (or --sweep)", err=True)
            raise typer.Exit(code=2)
        if policies and not compare:
            typer.echo("error: policy files given without --compare", err=True)
            raise typer.Exit(code=2)
        if compare and not policies:
            typer.echo("error: --compare needs one or more policy files", err=True)
            raise typer.Exit(code=2)
        try:
            sizes = [int(v) for v in warm_sizes.split(",") if v.strip()] if warm_sizes else []
        except ValueError:
            typer.echo(f"error: --warm-sizes takes whole numbers (0,1,2), not {warm_sizes!r}", err=True)
            raise typer.Exit(code=2) from None
        if any(size < 0 for size in sizes):
            typer.echo("error: --warm-sizes cannot be negative", err=True)
            raise typer.Exit(code=2)
        console = Console(stderr=True)
        show = sys.stderr.isatty()
        try:
            loaded = load_scenario(scenario)
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} ticks"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
                disable=not show,
            ) as bar:
                tasks: dict[str, TaskID] = {}
                # Reading and scaling a long trace takes seconds too: say so until the replay starts.
                preparing: list[TaskID] = [bar.add_task("reading and scaling demand", total=None)]

                def progress(label: str, done: int, total: int) -> None:
                    if preparing:
                        bar.remove_task(preparing.pop())
                    if total < PROGRESS_MIN_TICKS:
                        return
                    if label not in tasks:
                        tasks[label] = bar.add_task(f"replaying {label}", total=total)
                    bar.update(tasks[label], completed=done)

                result = dry_run(loaded, compare=policies or (), progress=progress, warm_sizes=sizes)
            # Imported here: matplotlib and Jinja2 cost every other autoscaler command a second to load.
            from autoscaler.simulate.report import risk_of, write_outputs

            risks = risk_of(result)
            written = write_outputs(result, out, measure=options, risks=risks)
        except AutoscalerError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from exc
        currency = result.fleet.currency
        for run in result.runs:
            s = run.summary
            typer.echo(
                f"{run.label}: {s['node_hours']:,.1f} node-hours, cost {money(s['cost'], currency)}, "
                f"{s['cost_ratio']:.3f}x oracle, {s['violation_seconds']} s with demand above capacity"
            )
        for run in result.warm_frontier:
            s = run.summary
            typer.echo(
                f"warm pool {s['warm_pool_size']}: cost {money(s['cost'], currency)} (running "
                f"{s['running_cost']:,.2f} + stopped {s['stopped_cost']:,.2f}), "
                f"{s['node_hours']:,.1f} node-hours, "
                f"{s['violation_seconds']} s above capacity, {s['unmet_stream_seconds']} unmet stream-s, "
                f"{s['launches']} launches, {s['warm_starts']} warm starts"
            )
        if result.recommended_warm_size is not None:
            typer.echo(f"recommended warm pool size: {result.recommended_warm_size}")
        if result.oracle_warm is not None:
            typer.echo(
                f"oracle: cost {money(result.oracle['cost'], currency)} cold, "
                f"{money(result.oracle_warm['cost'], currency)} with warm starts"
            )
        hpa = result.hpa_like.summary
        typer.echo(
            f"hpa_like: {hpa['node_hours']:,.1f} node-hours, cost {money(hpa['cost'], currency)}, "
            f"{hpa['cost_ratio']:.3f}x oracle, {hpa['violation_seconds']} s with demand above capacity"
        )
        for label, risk in risks.items():
            r = risk.total
            typer.echo(
                f"{label}: {r.requests_waited:,} requests waited ({duration_text(r.violation_seconds)} with "
                f"waiting), p95 wait {duration_text(r.wait_p95_s)}, worst {duration_text(r.wait_max_s)}, "
                f"worst queue {r.queue_max} streams, {r.drain_cuts} cut at the drain timeout; worst day "
                f"{risk.worst_day_label}, worst hour {risk.worst_hour_label} ({risk.timezone})"
            )
        typer.echo(f"wrote {', '.join(str(p) for p in written if p.parent == out)}")
