"""The decision store on sqlmodel: a SQLite file by default, PostgreSQL when controllers share state.

Three tables: ``tick`` (every tick's inputs, decision, reasons and error), ``instance_event`` (each
lifecycle transition of each instance) and ``engine_memory`` (the engine's memory per pool, written
in the same transaction as the tick it follows).

SQLite serves one controller: nothing stops two processes on one file from both acting. Several
controllers share a PostgreSQL store, where ``autoscaler.leader`` lets exactly one act per pool.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Engine, Text, event
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, col, create_engine, select

from autoscaler.domain import Lifecycle
from autoscaler.errors import StoreError

DEFAULT_URL = "sqlite:///.autoscaler/autoscaler.db"


def _utc(value: datetime) -> datetime:
    """Stored times are naive UTC (SQLite keeps no zone); read back as aware UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class TickRow(SQLModel, table=True):
    """One controller tick of one pool."""

    __tablename__ = "tick"

    id: int | None = Field(default=None, primary_key=True)
    pool: str = Field(index=True)
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

    id: int | None = Field(default=None, primary_key=True)
    pool: str = Field(index=True)
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


def _dumps(value: Mapping[str, Any]) -> str:
    return json.dumps(value, default=str, sort_keys=True)


class SqlStore:
    """``Store`` on a database URL (``sqlite:///path.db`` or ``postgresql+psycopg://...``).

    Tables are created on first use. Every public method raises ``StoreError`` (chained) when the
    database fails, and a failed ``record_tick`` writes nothing.
    """

    def __init__(self, url: str = DEFAULT_URL) -> None:
        self.url = url
        #: The SQLite file, watched so a deleted or replaced file is a fault, not silent writes into
        #: an unlinked inode nobody will ever read.
        self.sqlite_path: Path | None = None
        self._sqlite_identity: tuple[int, int] | None = None
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            self.sqlite_path = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
            self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine: Engine = create_engine(url, pool_pre_ping=True)
            if url.startswith("sqlite"):
                event.listen(self.engine, "connect", _sqlite_pragmas)
            SQLModel.metadata.create_all(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open store {self.safe_url}: {exc}") from exc
        if self.sqlite_path is not None:
            self._sqlite_identity = _identity(self.sqlite_path)
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

    @property
    def safe_url(self) -> str:
        """The URL with any password masked, for logs."""
        from sqlalchemy.engine import make_url

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

    def recent_ticks(self, pool: str, limit: int = 20) -> list[dict[str, Any]]:
        """The newest ticks of ``pool``, newest first."""
        with self._session("recent_ticks") as session:
            rows = session.exec(
                select(TickRow).where(TickRow.pool == pool).order_by(col(TickRow.id).desc()).limit(limit)
            ).all()
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


def open_store(url: str | None) -> SqlStore:
    """The store at ``url``, or the default SQLite file."""
    return SqlStore(url or DEFAULT_URL)
