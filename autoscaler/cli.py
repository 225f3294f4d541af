"""``autoscaler``: run, once, explain, history, status, pause, resume, store, demo, dry-run, node-agent."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from autoscaler.controller import TickOutcome, decision_record
from autoscaler.errors import AutoscalerError, PolicyError
from autoscaler.logs import configure_logging
from autoscaler.policy.explain import render_reasons
from autoscaler.telemetry import UNHEALTHY_AFTER_TICKS, ControllerMetrics, Health, MetricsServer

if TYPE_CHECKING:
    from autoscaler.pools import FileProblem, Selection
    from autoscaler.store import SqlStore
    from autoscaler.wiring import Runtime

app = typer.Typer(
    help="An autoscaler for GPU inference fleets. Start with `autoscaler demo`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

PolicyFiles = Annotated[
    list[Path] | None,
    typer.Option("--policy", "-p", help="A pool's policy file (YAML); repeat for several pools."),
]
PolicyDirs = Annotated[
    list[Path] | None,
    typer.Option(
        "--policies",
        help="A directory of policy files: every *.yaml / *.yml directly in it is one pool (repeatable).",
    ),
]
PoolNames = Annotated[
    list[str] | None, typer.Option("--pool", help="Only this pool of the selection (repeatable).")
]
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


def _open_store(store: str | None) -> SqlStore:
    """The store the selected pools share (one connection pool, however many pools)."""
    from autoscaler.store import open_store

    try:
        return open_store(store)
    except AutoscalerError as exc:
        _fail(str(exc))


def pool_builder(
    store: str | None,
    shared_store: SqlStore,
    telemetry: ControllerMetrics | None = None,
    *,
    shadow: bool = False,
) -> Callable[[Path], Runtime]:
    """How ``run`` and ``once`` build each selected pool's runtime: everything a run decides once for
    all its pools (store, telemetry; a mode such as shadow) is bound here."""
    from functools import partial

    from autoscaler.wiring import build_runtime

    return partial(build_runtime, store_url=store, telemetry=telemetry, store=shared_store, shadow=shadow)


def _selection(policies: list[Path] | None, policy: list[Path] | None, pool: list[str] | None) -> Selection:
    """The selected pools' files loaded once; a selection that runs nothing is an error (exit 2),
    with every file's problem printed."""
    from autoscaler.errors import PoolSelectionError
    from autoscaler.pools import load_selection

    if not policies and not policy:
        _fail("say which pools: --policy FILE (repeatable) or --policies DIR")
    try:
        selection = load_selection(policies or [], policy or [], pool or [])
    except PoolSelectionError as exc:
        _fail(str(exc))
    if not selection.policies:
        for problem in selection.problems:
            typer.echo(problem.error, err=True)
        if not selection.problems:
            _fail("no policy files selected (a --policies directory holds no *.yaml or *.yml)")
        raise typer.Exit(2)
    return selection


def _report_problems(problems: Sequence[FileProblem]) -> None:
    for problem in problems:
        typer.echo(f"pool {problem.pool} ({problem.path}): not run: {problem.error}", err=True)


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
    policy: PolicyFiles = None,
    policies: PolicyDirs = None,
    pool: PoolNames = None,
    store: StoreOption = None,
    metrics_port: Annotated[int | None, typer.Option(help="Serve the controller's metrics here.")] = None,
    metrics_host: Annotated[str, typer.Option(help="Address for --metrics-port.")] = "127.0.0.1",
    unhealthy_after: Annotated[
        int,
        typer.Option(min=1, help="/healthz fails (503) after this many tick periods with no good tick."),
    ] = UNHEALTHY_AFTER_TICKS,
    rescan: Annotated[
        float,
        typer.Option(min=0.1, help="Seconds between scans of the selected files for added or removed pools."),
    ] = 2.0,
    log_json: JsonLogs = False,
    shadow: ShadowOption = False,
) -> None:
    """Run the controller: every selected pool ticks every `scaling.tick`, until SIGTERM or SIGINT.

    Files added to a --policies directory start pools, changed files are reloaded, removed files stop
    managing their pool (its nodes are left as they are). With --metrics-port: /metrics for
    Prometheus and /healthz for a supervisor on that port.
    With --shadow: decide and record, change nothing (beside the autoscaler that runs the fleet).
    """
    from autoscaler.errors import PoolSelectionError
    from autoscaler.pools import PoolSet
    from autoscaler.service import PoolService

    configure_logging(json_lines=log_json)
    if not policies and not policy:
        _fail("say which pools: --policy FILE (repeatable) or --policies DIR")
    telemetry = ControllerMetrics(health=Health(unhealthy_after=unhealthy_after))
    shared_store = _open_store(store)
    try:
        pools = PoolSet(policies or [], policy or [],
                        pool_builder(store, shared_store, telemetry, shadow=shadow),
                        telemetry=telemetry, only=pool or [])
    except PoolSelectionError as exc:
        shared_store.close()
        _fail(str(exc))
    first = pools.scan()
    if not pools.entries and first.problems:
        # Nothing could start: a controller with no pool on a typo is worse than a clear exit.
        for problem in first.problems:
            typer.echo(problem.error, err=True)
        shared_store.close()
        raise typer.Exit(2)
    _report_problems(first.problems)
    named = {e.pool for e in pools.entries.values()} | {p.pool for p in first.problems}
    for name in sorted(set(pool or []) - named):
        typer.echo(f"warning: --pool {name}: no selected file defines it yet (started when one does)",
                   err=True)
    server = None
    if metrics_port is not None:
        try:
            server = MetricsServer(telemetry, metrics_host, metrics_port).start()
        except OSError as exc:
            pools.close()
            shared_store.close()
            _fail(f"cannot serve metrics on {metrics_host}:{metrics_port}: {exc}")
    service = PoolService(pools, blocking=True, rescan_s=rescan)
    service.install_signal_handlers()
    try:
        service.start(first)
    finally:
        service.stop()
        shared_store.close()
        if server is not None:
            server.close()
    typer.echo(f"stopped after {service.ticks} ticks", err=True)


def _outcome_json(outcome: TickOutcome) -> dict[str, Any]:
    payload = outcome.to_dict() | {
        "pool": outcome.pool,
        "at": outcome.at.isoformat(),
        "tick_id": outcome.tick_id,
        "ok": outcome.ok,
    }
    if outcome.decision is not None:
        payload["decision"] = decision_record(outcome.decision)
    return payload


def _build_all(
    selection: Selection, build: Callable[[Path], Runtime], runtimes: dict[str, Runtime]
) -> list[FileProblem]:
    """Each selected pool's runtime into ``runtimes`` (the caller closes them, also after a failure);
    the problems: files that did not load, pools whose adapters cannot be built."""
    from autoscaler.pools import FileProblem

    problems: list[FileProblem] = list(selection.problems)
    for name, (path, _policy) in sorted(selection.policies.items()):
        try:
            runtimes[name] = build(path)
        except AutoscalerError as exc:
            problems.append(FileProblem(path, name, "; ".join(getattr(exc, "problems", [])) or str(exc)))
    return problems


def _single(policies: list[Path] | None, policy: list[Path] | None) -> bool:
    """One ``--policy`` file and no directory: the output keeps its one-pool shape (an object)."""
    return not policies and len(policy or []) == 1


@app.command()
def once(
    policy: PolicyFiles = None,
    policies: PolicyDirs = None,
    pool: PoolNames = None,
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
    log_json: JsonLogs = False,
    shadow: ShadowOption = False,
) -> None:
    """Run one tick of each selected pool, print what each decided and did, and exit (status 1 if
    any tick had errors or any selected file could not run).

    With --json: the outcome object for a single --policy, else a list with one object per pool."""
    from concurrent.futures import ThreadPoolExecutor

    configure_logging(json_lines=log_json, level="warning")
    selection = _selection(policies, policy, pool)
    shared_store = _open_store(store)
    runtimes: dict[str, Runtime] = {}
    try:
        problems = _build_all(selection, pool_builder(store, shared_store, shadow=shadow), runtimes)
        # Concurrently, so one pool's slow cloud does not hold up the others' ticks.
        with ThreadPoolExecutor(max_workers=max(1, len(runtimes))) as threads:
            futures = {name: threads.submit(r.controller.tick) for name, r in runtimes.items()}
            outcomes = {name: future.result() for name, future in futures.items()}
    finally:
        for runtime in runtimes.values():
            runtime.close()
        shared_store.close()
    ok = not problems and all(o.ok for o in outcomes.values())
    if as_json:
        items: list[dict[str, Any]] = [_outcome_json(o) for _n, o in sorted(outcomes.items())]
        items += [p.to_dict() | {"ok": False} for p in problems]
        shown: Any = items[0] if _single(policies, policy) and items else items
        typer.echo(json.dumps(shown, indent=2, default=str))
    else:
        typer.echo("\n\n".join(render_outcome(o) for _n, o in sorted(outcomes.items())))
    _report_problems(problems)
    raise typer.Exit(0 if ok else 1)


@app.command()
def explain(
    policy: PolicyFiles = None,
    policies: PolicyDirs = None,
    pool: PoolNames = None,
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the trail as JSON.")] = False,
) -> None:
    """Show the reason trail of the current tick of each selected pool: observe and decide, change
    nothing (status 1 if a pool could not be observed or a file could not run)."""
    configure_logging(level="warning")
    selection = _selection(policies, policy, pool)
    shared_store = _open_store(store)
    results: list[dict[str, Any]] = []
    texts: list[str] = []
    failed: list[str] = []
    runtimes: dict[str, Runtime] = {}
    try:
        problems = _build_all(selection, pool_builder(store, shared_store), runtimes)
        for name, runtime in runtimes.items():
            try:
                _policy, observation, decision = runtime.controller.explain()
            except AutoscalerError as exc:
                failed.append(f"pool {name}: cannot observe the pool: {exc}")
                continue
            results.append(
                {"pool": name, "inputs": observation.inputs(), "decision": decision_record(decision)}
            )
            text = render_reasons(decision)
            if observation.forecast is not None:
                text += "\n" + "\n".join(observation.forecast.describe())
            texts.append(text if _single(policies, policy) else f"== pool {name} ==\n{text}")
    finally:
        for runtime in runtimes.values():
            runtime.close()
        shared_store.close()
    if as_json:
        single = _single(policies, policy) and len(results) == 1
        typer.echo(json.dumps(
            {k: v for k, v in results[0].items() if k != "pool"} if single else results, indent=2, default=str
        ))
    elif texts:
        typer.echo("\n\n".join(texts))
    for line in failed:
        typer.echo(f"error: {line}", err=True)
    _report_problems(problems)
    if failed or problems:
        raise typer.Exit(1)


def _read_store(store: str | None) -> Any:
    """The store opened read-only: a missing or unreadable store is a clear error, never created."""
    from autoscaler.store import open_store

    try:
        return open_store(store, readonly=True)
    except AutoscalerError as exc:
        _fail(str(exc))


def _pools(
    policies: list[Path] | None, policy: list[Path] | None, pool: list[str] | None, reader: Any
) -> tuple[list[str], dict[str, bool], list[FileProblem]]:
    """The pools a read command is about, the ``paused: true`` of their files, and the selected
    files that do not load: ``--pool`` names alone, the selected files' pools (narrowed by
    ``--pool``), or every pool the store has recorded."""
    if not policies and not policy:
        return (list(pool) if pool else list(reader.pools())), {}, []
    selection = _selection(policies, policy, pool)
    names = sorted(selection.policies)
    in_files = {name: p.paused for name, (_path, p) in selection.policies.items()}
    return names, in_files, selection.problems


@app.command()
def history(
    policy: PolicyFiles = None,
    policies: PolicyDirs = None,
    pool: PoolNames = None,
    store: StoreOption = None,
    since: Annotated[
        str | None, typer.Option(help="Only ticks this recent: 90s, 30m, 2h, 1d.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many ticks per pool.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the ticks as JSON.")] = False,
    report: Annotated[
        Path | None,
        typer.Option(help="Also write an HTML page comparing shadow-mode ticks with the real fleet."),
    ] = None,
) -> None:
    """Print the selected pools' recorded ticks, newest first (reads the store; never creates one).

    Shadow-mode ticks show what the shadow wanted beside the fleet's real size, with a summary per
    pool; --report writes the same comparison as a page with a chart."""
    from datetime import UTC, datetime

    from autoscaler.policy.model import parse_duration
    from autoscaler.terminal import (
        history_rows,
        history_table,
        print_table,
        shadow_summary,
        shadow_summary_line,
    )

    if not policy and not policies and not pool:
        _fail("say which pools: --pool NAME, --policy FILE or --policies DIR")
    cutoff = None
    if since is not None:
        try:
            cutoff = datetime.now(UTC) - parse_duration(since)
        except ValueError as exc:
            _fail(f"--since: {exc}")
    reader = _read_store(store)
    try:
        names, _paused, problems = _pools(policies, policy, pool, reader)
        rows = [row for name in names for row in history_rows(reader.recent_ticks(name, limit, since=cutoff))]
    except AutoscalerError as exc:
        _fail(str(exc))
    finally:
        reader.close()
    rows.sort(key=lambda r: str(r["at"]), reverse=True)
    summaries = {
        name: found
        for name in names
        if (found := shadow_summary([r for r in rows if r["pool"] == name])) is not None
    }
    if as_json:
        # Shadow ticks add a summary (by pool when several are shown); an acting pool's history
        # stays a plain list of ticks.
        shown: Any = summaries if len(names) > 1 else next(iter(summaries.values()), None)
        payload: Any = rows if not summaries else {"ticks": rows, "shadow_summary": shown}
        typer.echo(json.dumps(payload, indent=2, default=str))
    else:
        print_table(*history_table(rows, with_pool=len(names) > 1))
        for name, summary in summaries.items():
            prefix = f"{name}: " if len(names) > 1 else ""
            typer.echo(prefix + shadow_summary_line(summary))
    if report is not None:
        if not summaries:
            _fail("--report: no shadow-mode ticks in the selection (run the controller with --shadow)")
        from autoscaler.files import atomic_write
        from autoscaler.shadow_report import render_shadow_report

        try:
            atomic_write(report, render_shadow_report(rows, summaries))
        except OSError as exc:
            _fail(f"--report: cannot write {report}: {exc}")
        typer.echo(f"wrote {report}", err=True)
    _report_problems(problems)
    if problems:
        raise typer.Exit(1)


@app.command()
def status(
    policy: PolicyFiles = None,
    policies: PolicyDirs = None,
    pool: PoolNames = None,
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Pools, their nodes by state, the last decision and its reason, paused, and who leads each
    (reads the store). Without a selection: every pool the store has recorded."""
    from autoscaler.leader import leaders
    from autoscaler.terminal import print_table, status_rows, status_table

    reader = _read_store(store)
    try:
        pools, in_files, problems = _pools(policies, policy, pool, reader)
        paused = {
            p: bool((reader.pause_state(p) or {}).get("paused")) or in_files.get(p, False) for p in pools
        }
        rows = status_rows(reader, pools, paused, leaders(store, pools))
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
    _report_problems(problems)
    if problems:
        raise typer.Exit(1)


def _policy_pool(policy: Path | None) -> str:
    from autoscaler.policy.load import load_policy

    assert policy is not None  # checked by the caller
    try:
        return load_policy(policy).pool
    except PolicyError as exc:
        _fail("; ".join(exc.problems) or str(exc))


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
        name = pool or _policy_pool(policy)
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
