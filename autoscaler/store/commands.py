"""``autoscaler store ...``: bring the store's schema up to date, prune old records, show the revision.

``register(app)`` adds the ``store`` group to the main Typer app (``autoscaler.cli``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, NoReturn

import typer

from autoscaler.errors import AutoscalerError

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="AUTOSCALER_STORE",
        help="Database URL (default: the SQLite file `autoscaler status` reads).",
    ),
]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _existing(url: str | None) -> str:
    """The URL, after checking a SQLite file is there: maintenance never creates a store either."""
    from autoscaler.store.sql import default_store_url, sqlite_path

    resolved = url or default_store_url()
    path = sqlite_path(resolved)
    if path is not None and not path.exists():
        _fail(f"no store at {path} (is --store or AUTOSCALER_STORE pointing at the controller's store?)")
    return resolved


def register(app: typer.Typer) -> None:
    """Add the ``store`` group (``upgrade``, ``prune``, ``revision``) to ``app``."""
    store_app = typer.Typer(
        help="Maintain the decision store: migrations and retention.", no_args_is_help=True
    )

    @store_app.command("upgrade")
    def upgrade_command(store: StoreOption = None) -> None:
        """Migrate the store's schema to this release's newest revision (`run` also does it on start)."""
        from sqlalchemy import create_engine
        from sqlalchemy.exc import SQLAlchemyError

        from autoscaler.store.migrate import upgrade

        url = _existing(store)
        engine = create_engine(url)
        try:
            before, after = upgrade(engine)
        except SQLAlchemyError as exc:
            _fail(f"upgrade failed: {exc}")
        finally:
            engine.dispose()
        if before == after:
            typer.echo(f"store already at revision {after}")
        else:
            typer.echo(f"store upgraded from revision {before or 'empty'} to {after}")

    @store_app.command("revision")
    def revision_command(store: StoreOption = None) -> None:
        """Print the store's schema revision and this release's newest."""
        from sqlalchemy import create_engine
        from sqlalchemy.exc import SQLAlchemyError

        from autoscaler.store.migrate import current_revision, head_revision

        engine = create_engine(_existing(store))
        try:
            current = current_revision(engine)
        except SQLAlchemyError as exc:
            _fail(f"cannot read the store's revision: {exc}")
        finally:
            engine.dispose()
        shown = current or "none (run `autoscaler store upgrade`)"
        typer.echo(f"store: {shown}; this release: {head_revision()}")

    @store_app.command("prune")
    def prune_command(
        older_than: Annotated[
            str, typer.Option("--older-than", help="Delete records older than this: 30d, 12h.")
        ],
        pool: Annotated[str | None, typer.Option(help="Only this pool (default: every pool).")] = None,
        store: StoreOption = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
    ) -> None:
        """Delete ticks older than --older-than, and records of instances terminated before then."""
        from autoscaler.policy.model import parse_duration
        from autoscaler.store import open_store

        try:
            cutoff = datetime.now(UTC) - parse_duration(older_than)
        except ValueError as exc:
            _fail(f"--older-than: {exc}")
        try:
            opened = open_store(_existing(store))
            try:
                result = opened.prune(cutoff, pool=pool)
            finally:
                opened.close()
        except AutoscalerError as exc:
            _fail(str(exc))
        if as_json:
            typer.echo(json.dumps({"ticks": result.ticks, "instance_events": result.instance_events,
                                   "before": cutoff.isoformat()}))
        else:
            typer.echo(
                f"pruned {result.ticks} ticks and {result.instance_events} instance records "
                f"older than {cutoff.isoformat(timespec='seconds')}"
            )

    app.add_typer(store_app, name="store")
