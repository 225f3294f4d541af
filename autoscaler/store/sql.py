"""The decision store on sqlmodel: a SQLite file by default, PostgreSQL when controllers share state.

Tables: ``tick`` (every tick's inputs, decision, reasons and error), ``instance_event`` (each
lifecycle transition of each instance), ``engine_memory`` (the engine's memory per pool, written
in the same transaction as the tick it follows), ``pool_pause`` and ``intent`` (each world change,
recorded before the executor's call and completed after it). The schema is Alembic's (``store/migrations``):
opening a store for writing brings it to the newest revision; ``prune`` bounds its size.

SQLite serves one controller: nothing stops two processes on one file from both acting. Several
controllers share a PostgreSQL store, where ``autoscaler.leader`` lets exactly one act per pool.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Engine, Index, Text, delete, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, col, create_engine, select

from autoscaler.domain import Intent, IntentKind, IntentStatus, Lifecycle, PruneResult
from autoscaler.errors import StoreError

#: The file name of the default SQLite store inside its state directory.
STORE_FILE = "autoscaler.db"


def default_state_dir() -> Path:
    """Where the default SQLite store lives; never the current directory.

    ``$STATE_DIRECTORY`` (set by systemd for a unit with ``StateDirectory=autoscaler``, i.e.
    ``/var/lib/autoscaler``), else ``$XDG_STATE_HOME/autoscaler``, else ``~/.local/state/autoscaler``.
    ``$AUTOSCALER_STORE`` (or ``--store``) overrides the whole URL before this is consulted.
    """
    systemd = os.environ.get("STATE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":", maxsplit=1)[0])
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "autoscaler"


def default_store_url() -> str:
    """The default store: a SQLite file in ``default_state_dir()``."""
    return f"sqlite:///{default_state_dir() / STORE_FILE}"


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL, or None for another database or an in-memory one."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _utc(value: datetime) -> datetime:
    """Stored times are naive UTC (SQLite keeps no zone); read back as aware UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class TickRow(SQLModel, table=True):
    """One controller tick of one pool."""

    __tablename__ = "tick"
    __table_args__ = (Index("ix_tick_pool_at", "pool", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    pool: str
    at: datetime = Field(index=True)
    direction: str = ""
    desired: int | None = None
    ready: int | None = None
    booting: int | None = None
    draining: int | None = None
    launch: int = 0
    summary: str = ""
    inputs: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    decision: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class InstanceEventRow(SQLModel, table=True):
    """One lifecycle transition of one instance."""

    __tablename__ = "instance_event"
    __table_args__ = (Index("ix_instance_event_pool_at", "pool", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    pool: str
    instance_id: str = Field(index=True)
    state: str
    at: datetime
    detail: str = Field(default="{}", sa_column=Column(Text, nullable=False))


class EngineMemoryRow(SQLModel, table=True):
    """The engine memory after the latest tick of a pool."""

    __tablename__ = "engine_memory"

    pool: str = Field(primary_key=True)
    memory: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    updated_at: datetime


class PoolPauseRow(SQLModel, table=True):
    """Whether a pool is paused from the command line, since when and why."""

    __tablename__ = "pool_pause"

    pool: str = Field(primary_key=True)
    paused: bool
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    at: datetime


class IntentRow(SQLModel, table=True):
    """One world change: recorded before the executor's call, completed after it."""

    __tablename__ = "intent"
    __table_args__ = (Index("ix_intent_pool_status", "pool", "status"),)

    id: int | None = Field(default=None, primary_key=True)
    pool: str
    kind: str
    status: str
    tick_id: int | None = Field(default=None, index=True)
    instance_ids: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    token: str | None = None
    count: int = 0
    detail: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    result: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime
    closed_at: datetime | None = None

    def intent(self) -> Intent:
        """The domain value."""
        assert self.id is not None  # read back from the database
        return Intent(
            id=self.id, pool=self.pool, kind=IntentKind(self.kind), status=IntentStatus(self.status),
            tick_id=self.tick_id, instance_ids=tuple(json.loads(self.instance_ids)), token=self.token,
            count=self.count, detail=json.loads(self.detail), result=json.loads(self.result),
            error=self.error, created_at=_utc(self.created_at),
            closed_at=_utc(self.closed_at) if self.closed_at else None,
        )


def _dumps(value: Mapping[str, Any]) -> str:
    return json.dumps(value, default=str, sort_keys=True)


class SqlStore:
    """``Store`` on a database URL (``sqlite:///path.db`` or ``postgresql+psycopg://...``).

    A writer (the controller) creates the tables on first use. A reader (``readonly=True``:
    ``history``, ``status``) never creates anything: a SQLite file that does not exist, a database
    without the store's tables or one it cannot read is a ``StoreError`` saying so. Every public
    method raises ``StoreError`` (chained) when the database fails, and a failed ``record_tick``
    writes nothing.
    """

    def __init__(self, url: str | None = None, *, readonly: bool = False) -> None:
        self.url = url or default_store_url()
        self.readonly = readonly
        path = sqlite_path(self.url)
        #: The SQLite file, watched so a deleted or replaced file is a fault, not silent writes into
        #: an unlinked inode nobody will ever read.
        self.sqlite_path: Path | None = path
        self._sqlite_identity: tuple[int, int] | None = None
        connect_url = self.url
        if path is not None and readonly:
            if not path.exists():
                raise StoreError(
                    f"no store at {path}: nothing has been recorded there "
                    "(is --store or AUTOSCALER_STORE pointing at the controller's store?)"
                )
            if not os.access(path, os.R_OK):
                raise StoreError(f"cannot read the store {path}: permission denied")
            # Opened read-only at the SQLite level too: a read can never write or create the file.
            connect_url = f"sqlite:///file:{path.resolve()}?mode=ro&uri=true"
        elif path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine: Engine = create_engine(connect_url, pool_pre_ping=True)
            if path is not None:
                pragmas = _sqlite_read_pragmas if readonly else _sqlite_pragmas
                event.listen(self.engine, "connect", pragmas)
            if readonly:
                self._require_tables()
            else:
                from autoscaler.store.migrate import upgrade

                upgrade(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open store {self.safe_url}: {_first_line(exc)}") from exc
        if self.sqlite_path is not None:
            self._sqlite_identity = _identity(self.sqlite_path)
            if not readonly:
                _owner_only(self.sqlite_path)

    def _check_sqlite_file(self) -> None:
        """Raise ``StoreError`` while the SQLite file is missing; reconnect when it was replaced
        (restored from a backup), so the store resumes on the file that is there now."""
        if self.sqlite_path is None:
            return
        identity = _identity(self.sqlite_path)
        if identity is None:
            raise StoreError(
                f"the SQLite file {self.sqlite_path} is gone (deleted?); nothing is done until it is "
                "restored or the controller restarted"
            )
        if identity != self._sqlite_identity:
            self.engine.dispose()  # connections still hold the old inode open
            self._sqlite_identity = identity

    def _require_tables(self) -> None:
        tables = set(inspect(self.engine).get_table_names())
        missing = sorted(set(SQLModel.metadata.tables) - tables)
        if TickRow.__tablename__ not in tables:
            raise StoreError(
                f"{self.safe_url} is not an autoscaler store (no {TickRow.__tablename__!r} table); "
                "nothing has been recorded there"
            )
        if missing:
            raise StoreError(f"{self.safe_url} lacks the store tables {', '.join(missing)}")

    @property
    def safe_url(self) -> str:
        """The URL with any password masked, for logs."""
        return make_url(self.url).render_as_string(hide_password=True)

    @contextmanager
    def _session(self, what: str) -> Iterator[Session]:
        self._check_sqlite_file()
        try:
            with Session(self.engine) as session, session.begin():
                yield session
        except SQLAlchemyError as exc:
            raise StoreError(f"store {what} failed: {exc}") from exc

    def record_tick(
        self,
        pool: str,
        at: datetime,
        inputs: Mapping[str, Any],
        decision: Mapping[str, Any],
        memory: Mapping[str, Any],
        error: str | None = None,
    ) -> int:
        """Persist one tick and the engine memory after it, in one transaction; return the tick id."""
        row = TickRow(
            pool=pool,
            at=_utc(at),
            direction=str(decision.get("direction", "")),
            desired=decision.get("desired"),
            ready=decision.get("ready"),
            booting=decision.get("booting"),
            draining=decision.get("draining"),
            launch=int(decision.get("launch", 0) or 0),
            summary=str(decision.get("summary", "")),
            inputs=_dumps(inputs),
            decision=_dumps(decision),
            error=error,
        )
        with self._session("record_tick") as session:
            session.add(row)
            if memory:
                existing = session.get(EngineMemoryRow, pool)
                if existing is None:
                    session.add(EngineMemoryRow(pool=pool, memory=_dumps(memory), updated_at=_utc(at)))
                else:
                    existing.memory = _dumps(memory)
                    existing.updated_at = _utc(at)
            session.flush()
            assert row.id is not None  # set by flush
            return row.id

    def update_tick(self, tick_id: int, *, outcome: Mapping[str, Any], error: str | None = None) -> None:
        """Attach what the executor did (and any error) to a recorded tick."""
        with self._session("update_tick") as session:
            row = session.get(TickRow, tick_id)
            if row is None:
                raise StoreError(f"tick {tick_id} does not exist")
            decision = json.loads(row.decision)
            decision["outcome"] = dict(outcome)
            row.decision = _dumps(decision)
            if error:
                row.error = f"{row.error}; {error}" if row.error else error

    def load_memory(self, pool: str) -> dict[str, Any] | None:
        """The engine memory saved with the last tick of ``pool``, or None."""
        with self._session("load_memory") as session:
            row = session.get(EngineMemoryRow, pool)
            return json.loads(row.memory) if row else None

    def record_lifecycle(
        self,
        pool: str,
        instance_id: str,
        state: Lifecycle,
        at: datetime,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Append a transition unless the instance is already in ``state``."""
        with self._session("record_lifecycle") as session:
            last = session.exec(
                select(InstanceEventRow)
                .where(InstanceEventRow.pool == pool, InstanceEventRow.instance_id == instance_id)
                .order_by(col(InstanceEventRow.id).desc())
                .limit(1)
            ).first()
            if last is not None and last.state == state.value:
                return
            session.add(
                InstanceEventRow(
                    pool=pool,
                    instance_id=instance_id,
                    state=state.value,
                    at=_utc(at),
                    detail=_dumps(detail or {}),
                )
            )

    def lifecycles(self, pool: str) -> dict[str, tuple[Lifecycle, datetime]]:
        """Latest lifecycle of each instance of ``pool`` and when it was entered."""
        with self._session("lifecycles") as session:
            rows = session.exec(
                select(InstanceEventRow)
                .where(InstanceEventRow.pool == pool)
                .order_by(col(InstanceEventRow.id))
            ).all()
            latest: dict[str, tuple[Lifecycle, datetime]] = {}
            for row in rows:
                latest[row.instance_id] = (Lifecycle(row.state), _utc(row.at))
            return latest

    def instance_history(self, pool: str, instance_id: str) -> list[dict[str, Any]]:
        """Every transition of one instance, oldest first."""
        with self._session("instance_history") as session:
            rows = session.exec(
                select(InstanceEventRow)
                .where(InstanceEventRow.pool == pool, InstanceEventRow.instance_id == instance_id)
                .order_by(col(InstanceEventRow.id))
            ).all()
            return [
                {"state": r.state, "at": _utc(r.at).isoformat(), "detail": json.loads(r.detail)} for r in rows
            ]

    def recent_ticks(
        self, pool: str, limit: int | None = 20, since: datetime | None = None
    ) -> list[dict[str, Any]]:
        """The newest ticks of ``pool``, newest first; only those at or after ``since`` when given."""
        query = select(TickRow).where(TickRow.pool == pool)
        if since is not None:
            query = query.where(col(TickRow.at) >= _utc(since))
        query = query.order_by(col(TickRow.id).desc())
        if limit is not None:
            query = query.limit(limit)
        with self._session("recent_ticks") as session:
            rows = session.exec(query).all()
            return [
                {
                    "id": r.id,
                    "pool": r.pool,
                    "at": _utc(r.at).isoformat(),
                    "direction": r.direction,
                    "desired": r.desired,
                    "ready": r.ready,
                    "booting": r.booting,
                    "draining": r.draining,
                    "launch": r.launch,
                    "summary": r.summary,
                    "inputs": json.loads(r.inputs),
                    "decision": json.loads(r.decision),
                    "error": r.error,
                }
                for r in rows
            ]

    def prune(self, before: datetime, pool: str | None = None) -> PruneResult:
        """Delete ticks recorded before ``before`` (of ``pool``, or of every pool), and the lifecycle
        records of instances that were terminated before it. The engine memory and everything about
        live instances stay; returns how many rows went."""
        cutoff = _utc(before)
        ticks = delete(TickRow).where(col(TickRow.at) < cutoff)
        if pool is not None:
            ticks = ticks.where(col(TickRow.pool) == pool)
        with self._session("prune") as session:
            removed_ticks = session.execute(ticks).rowcount or 0  # type: ignore[attr-defined]
            events = select(InstanceEventRow).order_by(col(InstanceEventRow.id))
            if pool is not None:
                events = events.where(InstanceEventRow.pool == pool)
            latest: dict[tuple[str, str], InstanceEventRow] = {}
            for row in session.exec(events):
                latest[(row.pool, row.instance_id)] = row
            gone = [
                key
                for key, row in latest.items()
                if row.state == Lifecycle.TERMINATED.value and _utc(row.at) < cutoff
            ]
            removed_events = 0
            for row_pool, instance in gone:
                result = session.execute(
                    delete(InstanceEventRow).where(
                        col(InstanceEventRow.pool) == row_pool, col(InstanceEventRow.instance_id) == instance
                    )
                )
                removed_events += result.rowcount or 0  # type: ignore[attr-defined]
            # Completed intents go with the ticks they belong to; an open one is kept for reconcile.
            intents = delete(IntentRow).where(
                col(IntentRow.created_at) < cutoff, col(IntentRow.status) != IntentStatus.OPEN.value
            )
            if pool is not None:
                intents = intents.where(col(IntentRow.pool) == pool)
            session.execute(intents)
        return PruneResult(ticks=removed_ticks, instance_events=removed_events)

    def set_paused(self, pool: str, paused: bool, at: datetime, reason: str | None = None) -> None:
        """Pause (or resume) ``pool`` from the command line."""
        with self._session("set_paused") as session:
            row = session.get(PoolPauseRow, pool)
            if row is None:
                session.add(PoolPauseRow(pool=pool, paused=paused, reason=reason, at=_utc(at)))
            else:
                row.paused, row.reason, row.at = paused, reason, _utc(at)

    def pause_state(self, pool: str) -> dict[str, Any] | None:
        """``{"paused", "reason", "at"}`` as last set for ``pool``, or None if never."""
        with self._session("pause_state") as session:
            row = session.get(PoolPauseRow, pool)
            if row is None:
                return None
            return {"paused": row.paused, "reason": row.reason, "at": _utc(row.at).isoformat()}

    def pools(self) -> list[str]:
        """Every pool with a recorded tick or instance, sorted."""
        with self._session("pools") as session:
            ticked = session.exec(select(TickRow.pool).distinct()).all()
            instances = session.exec(select(InstanceEventRow.pool).distinct()).all()
            return sorted({*ticked, *instances})

    def open_intent(
        self,
        pool: str,
        kind: IntentKind,
        at: datetime,
        *,
        tick_id: int | None = None,
        instance_ids: tuple[str, ...] = (),
        token: str | None = None,
        count: int = 0,
        detail: Mapping[str, Any] | None = None,
        status: IntentStatus = IntentStatus.OPEN,
    ) -> int:
        """Record an intent (committed when this returns); return its id."""
        row = IntentRow(
            pool=pool, kind=IntentKind(kind).value, status=IntentStatus(status).value, tick_id=tick_id,
            instance_ids=json.dumps(list(instance_ids)), token=token, count=count,
            detail=_dumps(detail or {}), created_at=_utc(at),
        )
        with self._session("open_intent") as session:
            session.add(row)
            session.flush()
            assert row.id is not None  # set by flush
            return row.id

    def close_intent(
        self,
        intent_id: int,
        status: IntentStatus,
        at: datetime,
        *,
        result: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Complete an intent with what happened."""
        with self._session("close_intent") as session:
            row = session.get(IntentRow, intent_id)
            if row is None:
                raise StoreError(f"intent {intent_id} does not exist")
            row.status = IntentStatus(status).value
            row.result = _dumps(result or {})
            row.error = error
            row.closed_at = _utc(at)

    def intents(
        self, pool: str, *, open_only: bool = False, tick_id: int | None = None, limit: int | None = None
    ) -> list[Intent]:
        """Intents of ``pool``, oldest first (the newest ``limit``)."""
        query = select(IntentRow).where(IntentRow.pool == pool)
        if open_only:
            query = query.where(IntentRow.status == IntentStatus.OPEN.value)
        if tick_id is not None:
            query = query.where(IntentRow.tick_id == tick_id)
        query = query.order_by(col(IntentRow.id).desc())
        if limit is not None:
            query = query.limit(limit)
        with self._session("intents") as session:
            return [row.intent() for row in reversed(session.exec(query).all())]

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def _owner_only(path: Path) -> None:
    """The store holds the pool's whole history: readable by its owner only (SQLite gives its
    journal the database file's mode)."""
    with suppress(OSError):
        path.chmod(0o600)


def _first_line(exc: SQLAlchemyError) -> str:
    """The driver's message without SQLAlchemy's SQL echo and background link."""
    original = getattr(exc, "orig", None)
    return str(original if original is not None else exc).strip().splitlines()[0]


def _sqlite_read_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # A rollback journal, not WAL, and no memory map: WAL maps the -shm file with MAP_SHARED, and a
    # write to that mapping when the file cannot be written (made immutable, on a filesystem gone
    # read-only) kills the process with SIGBUS instead of returning an error. With a journal
    # every failed write is an SQLite error the controller reports. Readers (`autoscaler history`)
    # wait on the busy timeout while a tick writes, which takes milliseconds.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA journal_mode=DELETE")
    cursor.execute("PRAGMA mmap_size=0")
    cursor.close()


def open_store(url: str | None, *, readonly: bool = False) -> SqlStore:
    """The store at ``url``, or the default SQLite file (``default_store_url``)."""
    return SqlStore(url, readonly=readonly)
