"""``autoscaler``: run | once | explain | history | demo | dry-run | policy validate/schema."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from prometheus_client import start_http_server

from autoscaler.controller import TickOutcome, decision_record
from autoscaler.errors import AutoscalerError, PolicyError
from autoscaler.logs import configure_logging
from autoscaler.policy.explain import render_reasons
from autoscaler.telemetry import ControllerMetrics

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
        help="Database URL (default: sqlite:///.autoscaler/autoscaler.db; postgresql+psycopg://... "
        "when several controllers share state).",
    ),
]
JsonLogs = Annotated[bool, typer.Option("--log-json", help="Log one JSON object per line.")]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _runtime(policy: Path, store: str | None, telemetry: ControllerMetrics | None = None) -> Any:
    from autoscaler.wiring import build_runtime

    try:
        return build_runtime(policy, store, telemetry=telemetry)
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
        ("launched", outcome.launched),
        ("draining", outcome.drained),
        ("joined balancer", outcome.joined),
    ):
        if items:
            lines.append(f"{label}: {', '.join(items)}")
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
    log_json: JsonLogs = False,
) -> None:
    """Run the controller: one tick every `scaling.tick`, until SIGTERM or SIGINT."""
    from autoscaler.service import TickService

    configure_logging(json_lines=log_json)
    telemetry = ControllerMetrics()
    runtime = _runtime(policy, store, telemetry)
    if metrics_port is not None:
        start_http_server(metrics_port, addr=metrics_host, registry=telemetry.registry)
    service = TickService(runtime, blocking=True)
    service.install_signal_handlers()
    try:
        service.start()
    finally:
        runtime.close()
    typer.echo(f"stopped after {service.ticks} ticks", err=True)


@app.command()
def once(
    policy: PolicyOption,
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
    log_json: JsonLogs = False,
) -> None:
    """Run one tick, print what it decided and did, and exit (status 1 if the tick had errors)."""
    configure_logging(json_lines=log_json, level="warning")
    runtime = _runtime(policy, store)
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


@app.command()
def history(
    policy: PolicyOption,
    store: StoreOption = None,
    limit: Annotated[int, typer.Option(help="How many ticks.")] = 20,
) -> None:
    """Print the pool's most recent recorded ticks, newest first."""
    from autoscaler.policy.load import load_policy
    from autoscaler.store import open_store

    try:
        pool = load_policy(policy).pool
        ticks = open_store(store).recent_ticks(pool, limit)
    except PolicyError as exc:
        _fail("; ".join(exc.problems) or str(exc))
    except AutoscalerError as exc:
        _fail(str(exc))
    for tick in ticks:
        error = f"  error: {tick['error']}" if tick.get("error") else ""
        typer.echo(f"{tick['at']}  #{tick['id']}  {tick['decision'].get('summary', '')}{error}")


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
    """Command groups that live beside their code: `policy` and `dry-run`."""
    for module in ("autoscaler.policy.commands", "autoscaler.simulate.commands"):
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
