"""Store faults with real databases: a SQLite file made immutable, deleted or full, and PostgreSQL
cut off or its connections killed mid-run. The controller stays up, acts on nothing it could not
record, reports the fault (error log, metric), and resumes when the store returns.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
import structlog
from sqlalchemy import event

from autoscaler.store import SqlStore
from autoscaler.testing.controller_rig import STREAMS_QUERY, Rig, make_rig, serving_pool_of
from autoscaler.testing.postgres import POSTGRES_URL, fresh_schema
from autoscaler.testing.tcp_proxy import TcpProxy

FAULT_TICKS = 5


def world_changes(rig: Rig) -> tuple[int, int, int]:
    """Launch calls, terminate calls and balancer changes so far."""
    return len(rig.provider.launch_calls), len(rig.provider.terminate_calls), rig.balancer.changes


def run_fault(store: SqlStore, inject: Callable[[], None], heal: Callable[[], None]) -> dict[str, Any]:
    """Two serving nodes and demand for more (and later for fewer); ``FAULT_TICKS`` ticks with the
    fault injected, then healed: per tick, whether its intent was recorded and what it changed in
    the world; then whether the controller resumed."""
    rig = make_rig(store=store)
    serving_pool_of(rig)(2)
    ticks: list[dict[str, Any]] = []
    with structlog.testing.capture_logs() as logs:
        inject()
        for load in [40.0] * (FAULT_TICKS - 2) + [0.0, 0.0]:  # scale-out wanted, then scale-in
            rig.metrics.set(STREAMS_QUERY, load)
            rig.clock.advance(15)
            before = world_changes(rig)
            outcome = rig.controller.tick()
            ticks.append({"recorded": outcome.tick_id is not None, "errors": outcome.errors,
                          "changed": world_changes(rig) != before})
        heal()
        rig.metrics.set(STREAMS_QUERY, 40.0)
        rig.clock.advance(15)
        resumed = rig.controller.tick()
    store_errors = rig.controller.telemetry.registry.get_sample_value(
        "autoscaler_store_errors_total", {"pool": "unit"})
    return {
        "ticks": ticks, "resumed_errors": resumed.errors,
        "resumed_recorded": resumed.tick_id is not None
        and store.recent_ticks("unit", limit=1)[0]["id"] == resumed.tick_id,
        "pool": len(rig.provider.list_instances("unit")),
        "fault_logs": sum(1 for e in logs if e["event"] == "store_fault" and e["log_level"] == "error"),
        "store_errors": store_errors,
    }


def assert_safe(result: dict[str, Any], *, failed_at_least: int = FAULT_TICKS) -> None:
    """No tick whose intent could not be recorded changed the world; each failing tick said why
    (error log, metric); the store came back and the next tick acted and was recorded."""
    ticks = result["ticks"]
    failed = [t for t in ticks if not t["recorded"]]
    assert len(failed) >= failed_at_least, ticks
    assert not any(t["changed"] for t in failed), ticks
    assert all(any("StoreError" in e for e in t["errors"]) for t in failed), ticks
    errored = sum(1 for t in ticks if any("StoreError" in e for e in t["errors"]))
    assert result["fault_logs"] == errored and result["store_errors"] == errored, result
    assert result["resumed_errors"] == [] and result["resumed_recorded"], result
    assert result["pool"] == 5, "the scale-out wanted during the fault happens once the store is back"


def _chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


def _store_files(db: Path) -> list[Path]:
    return [p for p in (db, *(db.with_name(db.name + s) for s in ("-journal", "-wal", "-shm"))) if p.exists()]


def _immutable_scenario(db: Path, queue: Any) -> None:
    store = SqlStore(f"sqlite:///{db}")
    made: list[Path] = []

    def freeze() -> None:
        made.extend(_store_files(db))
        _chattr("+i", *made)

    try:
        queue.put(run_fault(store, freeze, lambda: _chattr("-i", *made)))
    finally:
        for path in made:
            subprocess.run(["chattr", "-i", str(path)], check=False, capture_output=True)


def test_sqlite_made_immutable_is_an_error_not_sigbus(tmp_path: Path) -> None:
    """`chattr +i` on the SQLite files (root cannot write them either): the controller, in a child
    process, survives (no SIGBUS), acts on nothing for five ticks, and resumes after `chattr -i`."""
    db = tmp_path / "store.db"
    db.touch()
    probe = subprocess.run(["chattr", "+i", str(db)], check=False, capture_output=True) if shutil.which(
        "chattr") else None
    if probe is None or probe.returncode:
        pytest.skip("chattr +i is not available on this filesystem")
    _chattr("-i", db)
    db.unlink()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_immutable_scenario, args=(db, queue))
    child.start()
    child.join(timeout=120)  # the result is a few kB: it fits the pipe, so join cannot deadlock
    assert child.exitcode == 0, f"controller process died with exit code {child.exitcode} (-7 is SIGBUS)"
    assert_safe(queue.get(timeout=10))


def test_sqlite_deleted_mid_run_acts_on_nothing_until_restored(tmp_path: Path) -> None:
    """The SQLite file deleted under a running controller: no launch, drain or terminate goes
    unrecorded into an unlinked file; when the file is restored the controller resumes on it."""
    db = tmp_path / "store.db"
    backup = tmp_path / "backup.db"
    store = SqlStore(f"sqlite:///{db}")
    result = run_fault(store, lambda: (shutil.copy(db, backup), db.unlink()), lambda: shutil.copy(backup, db))
    assert_safe(result)
    store.close()


def test_sqlite_full_acts_on_nothing(tmp_path: Path) -> None:
    """A full SQLite database (its page limit reached, SQLITE_FULL as on a full disk): no action."""
    db = tmp_path / "store.db"
    store = SqlStore(f"sqlite:///{db}")
    limit = {"pages": 0}

    @event.listens_for(store.engine, "connect")
    def _cap(dbapi_connection: Any, _record: Any) -> None:
        if limit["pages"]:
            dbapi_connection.execute(f"PRAGMA max_page_count={limit['pages']}")

    def fill() -> None:
        # Cap the file at its size and use up every free page, so the next write has no room.
        with sqlite_connection(db) as raw:
            raw.execute("CREATE TABLE IF NOT EXISTS filler (b BLOB)")
            raw.commit()
            pages = raw.execute("PRAGMA page_count").fetchone()[0]
            raw.execute(f"PRAGMA max_page_count={pages + 4}")
            for size in (4096, 512, 16):
                with contextlib.suppress(sqlite3.OperationalError):
                    while True:
                        raw.execute("INSERT INTO filler VALUES (randomblob(?))", (size,))
                        raw.commit()
            limit["pages"] = raw.execute("PRAGMA page_count").fetchone()[0]
        store.engine.dispose()

    def heal() -> None:
        limit["pages"] = 0
        store.engine.dispose()

    result = run_fault(store, fill, heal)
    assert any("full" in e for tick in result["ticks"] for e in tick["errors"]), result["ticks"]
    # A write that still fits in a page the file has (the first tick's row) may succeed, recorded.
    assert_safe(result, failed_at_least=FAULT_TICKS - 1)
    store.close()


def sqlite_connection(db: Path) -> contextlib.closing[sqlite3.Connection]:
    """A plain sqlite3 connection (closed on exit)."""
    return contextlib.closing(sqlite3.connect(db))


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh schema in the local PostgreSQL's `test` database, dropped afterwards."""
    with fresh_schema() as schema:
        yield schema.name


def test_postgres_unreachable_mid_run(pg_schema: str) -> None:
    """PostgreSQL cut off (every connection reset, new ones refused) for five ticks: no action,
    StoreError each tick, resumed once reachable again."""
    url = sqlalchemy.engine.make_url(POSTGRES_URL)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = url.set(host="127.0.0.1", port=proxy.port, query={"options": f"-csearch_path={pg_schema}",
                                                                 "connect_timeout": "2"})
    store = SqlStore(proxied.render_as_string(hide_password=False))
    try:
        assert_safe(run_fault(store, proxy.cut, proxy.restore))
    finally:
        store.close()
        proxy.close()


def test_postgres_connections_killed_like_a_restart(pg_schema: str) -> None:
    """The server ends the controller's connections (what a restart does to a client) and refuses
    logins to the store's database user meanwhile: no action; resumed afterwards."""
    role = f"r_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE ROLE "{role}" LOGIN'))
        conn.execute(sqlalchemy.text(f'GRANT ALL ON SCHEMA "{pg_schema}" TO "{role}"'))
    url = sqlalchemy.engine.make_url(POSTGRES_URL).set(username=role, query={
        "options": f"-csearch_path={pg_schema}", "connect_timeout": "2"})
    store = SqlStore(url.render_as_string(hide_password=False))

    def restart() -> None:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'ALTER ROLE "{role}" NOLOGIN'))
            conn.execute(sqlalchemy.text(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"))

    def back() -> None:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'ALTER ROLE "{role}" LOGIN'))

    try:
        assert_safe(run_fault(store, restart, back))
    finally:
        store.close()
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP OWNED BY "{role}" CASCADE'))
            conn.execute(sqlalchemy.text(f'DROP ROLE "{role}"'))
        admin.dispose()
