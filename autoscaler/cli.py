"""``autoscaler``: run, once, explain, history, status, pause, resume, store, demo, dry-run, node-agent."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from autoscaler.controller import TickOutcome, decision_record
from autoscaler.errors import AutoscalerError, PolicyError
from autoscaler.logs import configure_logging
from autoscaler.policy.explain import render_reasons
from autoscaler.telemetry import UNHEALTHY_AFTER_TICKS, ControllerMetrics, Health, MetricsServer

app = typer.Typer(
    help="An autoscaler for GPU inference fleets. Start with `autoscaler demo`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

PolicyOption = Annotated[Path, typer.Option("--policy", "-p", help="The pool's policy file (YAML).")]
StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="AUTOSCALER_STORE",
        help="Database URL (default: a SQLite file in $STATE_DIRECTORY, $XDG_STATE_HOME/autoscaler or "
        "~/.local/state/autoscaler; postgresql+psycopg://... when several controllers share state).",
    ),
]
JsonLogs = Annotated[bool, typer.Option("--log-json", help="Log one JSON object per line.")]


def _version(value: bool) -> None:
    if value:
        from autoscaler.terminal import version

        typer.echo(f"autoscaler {version()}")
        raise typer.Exit(0)


@app.callback()
def _main(
    _show_version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """An autoscaler for GPU inference fleets. Start with `autoscaler demo`."""


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


ShadowOption = Annotated[
    bool,
    typer.Option(
        "--shadow",
        help="Shadow mode: observe and decide every tick, record what it would do, act on nothing "
        "(compare with the fleet's real size in `autoscaler history`).",
    ),
]


def _runtime(
    policy: Path, store: str | None, telemetry: ControllerMetrics | None = None, *, shadow: bool = False
) -> Any:
    from autoscaler.wiring import build_runtime

    try:
        return build_runtime(policy, store, telemetry=telemetry, shadow=shadow)
    except PolicyError as exc:
        for problem in exc.problems or [str(exc)]:
            typer.echo(problem, err=True)
        raise typer.Exit(2) from exc
    except AutoscalerError as exc:
        _fail(str(exc))


def render_outcome(outcome: TickOutcome) -> str:
    """Human-readable lines for one tick."""
    lines = [f"pool {outcome.pool} at {outcome.at.isoformat(timespec='seconds')}"]
    if outcome.decision is not None:
        lines.append(f"decision: {outcome.decision.summary()}")
    for label, items in (
        ("started warm", outcome.started),
        ("launched", outcome.launched),
        ("preparing for the warm pool", outcome.prepared),
        ("draining", outcome.drained),
        ("joined balancer", outcome.joined),
    ):
        if items:
            lines.append(f"{label}: {', '.join(items)}")
    lines.extend(f"stopped into the warm pool {i}: {why}" for i, why in outcome.stopped.items())
    lines.extend(f"terminated {i}: {why}" for i, why in outcome.terminated.items())
    lines.extend(f"note: {n}" for n in outcome.notes)
    lines.extend(f"error: {e}" for e in outcome.errors)
    return "\n".join(lines)


@app.command()
def run(
    policy: PolicyOption,
    store: StoreOption = None,
    metrics_port: Annotated[int | None, typer.Option(help="Serve the controller's metrics here.")] = None,
    metrics_host: Annotated[str, typer.Option(help="Address for --metrics-port.")] = "127.0.0.1",
    unhealthy_after: Annotated[
        int,
        typer.Option(min=1, help="/healthz fails (503) after this many tick periods with no good tick."),
    ] = UNHEALTHY_AFTER_TICKS,
    log_json: JsonLogs = False,
    shadow: ShadowOption = False,
) -> None:
    """Run the controller: one tick every `scaling.tick`, until SIGTERM or SIGINT.

    With --metrics-port: /metrics for Prometheus and /healthz for a supervisor on that port.
    With --shadow: decide and record, change nothing (beside the autoscaler that runs the fleet).
    """
    from autoscaler.service import TickService

    configure_logging(json_lines=log_json)
    telemetry = ControllerMetrics(health=Health(unhealthy_after=unhealthy_after))
    runtime = _runtime(policy, store, telemetry, shadow=shadow)
    server = None
    if metrics_port is not None:
        try:
            server = MetricsServer(telemetry, metrics_host, metrics_port).start()
        except OSError as exc:
            runtime.close()
            _fail(f"cannot serve metrics on {metrics_host}:{metrics_port}: {exc}")
    service = TickService(runtime, blocking=True)
    service.install_signal_handlers()
    try:
        service.start()
    finally:
        runtime.close()
        if server is not None:
            server.close()
    typer.echo(f"stopped after {service.ticks} ticks", err=True)


@app.command()
def once(
    policy: PolicyOption,
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
    log_json: JsonLogs = False,
    shadow: ShadowOption = False,
) -> None:
    """Run one tick, print what it decided and did, and exit (status 1 if the tick had errors)."""
    configure_logging(json_lines=log_json, level="warning")
    runtime = _runtime(policy, store, shadow=shadow)
    try:
        outcome = runtime.controller.tick()
    finally:
        runtime.close()
    if as_json:
        payload = outcome.to_dict() | {
            "pool": outcome.pool,
            "at": outcome.at.isoformat(),
            "tick_id": outcome.tick_id,
        }
        if outcome.decision is not None:
            payload["decision"] = decision_record(outcome.decision)
        typer.echo(json.dumps(payload, indent=2, default=str))
    else:
        typer.echo(render_outcome(outcome))
    raise typer.Exit(0 if outcome.ok else 1)


@app.command()
def explain(
    policy: PolicyOption,
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the trail as JSON.")] = False,
) -> None:
    """Show the reason trail of the current tick: observe and decide, change nothing."""
    configure_logging(level="warning")
    runtime = _runtime(policy, store)
    try:
        _policy, observation, decision = runtime.controller.explain()
    except AutoscalerError as exc:
        _fail(f"cannot observe the pool: {exc}", 1)
    finally:
        runtime.close()
    if as_json:
        typer.echo(
            json.dumps(
                {"inputs": observation.inputs(), "decision": decision_record(decision)}, indent=2, default=str
            )
        )
    else:
        typer.echo(render_reasons(decision))
        if observation.forecast is not None:
            typer.echo("\n".join(observation.forecast.describe()))


def _read_store(store: str | None) -> Any:
    """The store opened read-only: a missing or unreadable store is a clear error, never created."""
    from autoscaler.store import open_store

    try:
        return open_store(store, readonly=True)
    except AutoscalerError as exc:
        _fail(str(exc))


def _pools(policy: Path | None, pool: str | None, reader: Any) -> list[str]:
    """The pools a read command is about: ``--pool``, the ``--policy`` file's, or every recorded one."""
    from autoscaler.policy.load import load_policy

    if pool:
        return [pool]
    if policy is not None:
        try:
            return [load_policy(policy).pool]
        except PolicyError as exc:
            _fail("; ".join(exc.problems) or str(exc))
    return list(reader.pools())


@app.command()
def history(
    policy: Annotated[Path | None, typer.Option("--policy", "-p", help="The pool's policy file.")] = None,
    pool: Annotated[str | None, typer.Option("--pool", help="The pool's name (instead of --policy).")] = None,
    store: StoreOption = None,
    since: Annotated[
        str | None, typer.Option(help="Only ticks this recent: 90s, 30m, 2h, 1d.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many ticks.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the ticks as JSON.")] = False,
) -> None:
    """Print a pool's recorded ticks, newest first (reads the store; never creates one)."""
    from datetime import UTC, datetime

    from autoscaler.policy.model import parse_duration
    from autoscaler.terminal import (
        history_rows,
        history_table,
        print_table,
        shadow_summary,
        shadow_summary_line,
    )

    if policy is None and pool is None:
        _fail("say which pool: --pool NAME or --policy FILE")
    cutoff = None
    if since is not None:
        try:
            cutoff = datetime.now(UTC) - parse_duration(since)
        except ValueError as exc:
            _fail(f"--since: {exc}")
    reader = _read_store(store)
    try:
        (name,) = _pools(policy, pool, reader)
        rows = history_rows(reader.recent_ticks(name, limit, since=cutoff))
    except AutoscalerError as exc:
        _fail(str(exc))
    finally:
        reader.close()
    summary = shadow_summary(rows)
    if as_json:
        # Shadow ticks add a summary object; an acting pool's history stays a plain list of ticks.
        payload: Any = rows if summary is None else {"ticks": rows, "shadow_summary": summary}
        typer.echo(json.dumps(payload, indent=2, default=str))
    else:
        print_table(*history_table(rows))
        if summary is not None:
            typer.echo(shadow_summary_line(summary))


@app.command()
def status(
    policy: Annotated[Path | None, typer.Option("--policy", "-p", help="Only this policy's pool.")] = None,
    pool: Annotated[str | None, typer.Option("--pool", help="Only this pool.")] = None,
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Pools, their nodes by state, the last decision and its reason, paused, leader (reads the store)."""
    from autoscaler.terminal import print_table, status_rows, status_table

    reader = _read_store(store)
    try:
        pools = _pools(policy, pool, reader)
        paused = {p: bool((reader.pause_state(p) or {}).get("paused")) for p in pools}
        if policy is not None:
            from autoscaler.policy.load import load_policy

            in_file = load_policy(policy)
            paused[in_file.pool] = paused.get(in_file.pool, False) or in_file.paused
        rows = status_rows(reader, pools, paused)
    except AutoscalerError as exc:
        _fail(str(exc))
    finally:
        reader.close()
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
    elif not rows:
        typer.echo("no pool has recorded anything in this store yet", err=True)
    else:
        print_table(*status_table(rows))


def _set_pause(
    paused: bool, policy: Path | None, pool: str | None, store: str | None, reason: str | None
) -> None:
    from datetime import UTC, datetime

    from autoscaler.store import open_store

    _read_store(store).close()  # the store must exist: a mistyped --store creates nothing
    if policy is None and pool is None:
        _fail("say which pool: --pool NAME or --policy FILE")
    try:
        writer = open_store(store)
    except AutoscalerError as exc:
        _fail(str(exc))
    try:
        (name,) = _pools(policy, pool, writer)
        writer.set_paused(name, paused, datetime.now(UTC), reason)
    except AutoscalerError as exc:
        _fail(str(exc))
    finally:
        writer.close()
    if paused:
        typer.echo(f"pool {name} paused: ticks observe and record, act on nothing until `autoscaler resume`")
    else:
        typer.echo(f"pool {name} resumed")


@app.command()
def pause(
    policy: Annotated[Path | None, typer.Option("--policy", "-p", help="The pool's policy file.")] = None,
    pool: Annotated[str | None, typer.Option("--pool", help="The pool's name (instead of --policy).")] = None,
    reason: Annotated[str | None, typer.Option(help="Why (shown in each tick's notes).")] = None,
    store: StoreOption = None,
) -> None:
    """Pause a pool: the controller keeps observing and recording, and launches, drains and terminates
    nothing, until `autoscaler resume` (a running controller sees it on its next tick)."""
    _set_pause(True, policy, pool, store, reason)


@app.command()
def resume(
    policy: Annotated[Path | None, typer.Option("--policy", "-p", help="The pool's policy file.")] = None,
    pool: Annotated[str | None, typer.Option("--pool", help="The pool's name (instead of --policy).")] = None,
    store: StoreOption = None,
) -> None:
    """Resume a pool paused with `autoscaler pause` (a `paused: true` policy stays paused)."""
    _set_pause(False, policy, pool, store, None)


@app.command()
def demo(
    duration: Annotated[float, typer.Option(help="Seconds of load to replay.")] = 180.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    traces: Annotated[Path | None, typer.Option(help="Trace folder (default: ../shared/traces).")] = None,
    policy: Annotated[
        Path | None, typer.Option(help="Policy to run (default: policies/asr-demo.yaml).")
    ] = None,
) -> None:
    """Start Prometheus, nginx and a local fleet, replay a load ramp, and watch the fleet scale."""
    from autoscaler.demo import DemoError, run_demo

    configure_logging(level="error")
    try:
        summary = run_demo(
            duration_s=duration,
            traces_dir=traces,
            policy_path=policy,
            progress=sys.stderr if as_json else sys.stdout,
        )
    except DemoError as exc:
        _fail(str(exc), 1)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))


def _register_extensions() -> None:
    """Command groups that live beside their code: `policy`, `dry-run`, `store` and `node-agent`."""
    for module in ("autoscaler.policy.commands", "autoscaler.simulate.commands", "autoscaler.store.commands",
                   "autoscaler.node.commands"):
        try:
            importlib.import_module(module).register(app)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


_register_extensions()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
