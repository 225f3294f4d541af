"""Schema migrations (Alembic) from the first release's schema, and retention, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel
from typer.testing import CliRunner

from autoscaler.cli import app
from autoscaler.domain import IntentKind, Lifecycle
from autoscaler.store import SqlStore
from autoscaler.store.migrate import current_revision, head_revision, upgrade

#: The DDL the first release's ``SQLModel.metadata.create_all`` ran (before migrations existed).
FIRST_RELEASE_DDL = {
    "sqlite": """
        CREATE TABLE engine_memory (pool VARCHAR NOT NULL, memory TEXT NOT NULL,
            updated_at DATETIME NOT NULL, PRIMARY KEY (pool));
        CREATE TABLE instance_event (id INTEGER NOT NULL, pool VARCHAR NOT NULL,
            instance_id VARCHAR NOT NULL, state VARCHAR NOT NULL, at DATETIME NOT NULL,
            detail TEXT NOT NULL, PRIMARY KEY (id));
        CREATE INDEX ix_instance_event_pool ON instance_event (pool);
        CREATE INDEX ix_instance_event_instance_id ON instance_event (instance_id);
        CREATE TABLE tick (id INTEGER NOT NULL, pool VARCHAR NOT NULL, at DATETIME NOT NULL,
            direction VARCHAR NOT NULL, desired INTEGER, ready INTEGER, booting INTEGER, draining INTEGER,
            launch INTEGER NOT NULL, summary VARCHAR NOT NULL, inputs TEXT NOT NULL, decision TEXT NOT NULL,
            error TEXT, PRIMARY KEY (id));
        CREATE INDEX ix_tick_at ON tick (at);
        CREATE INDEX ix_tick_pool ON tick (pool);
    """,
    "postgresql": """
        CREATE TABLE engine_memory (pool VARCHAR NOT NULL, memory TEXT NOT NULL,
            updated_at TIMESTAMP WITH TIME ZONE NOT NULL, PRIMARY KEY (pool));
        CREATE TABLE instance_event (id SERIAL NOT NULL, pool VARCHAR NOT NULL,
            instance_id VARCHAR NOT NULL, state VARCHAR NOT NULL, at TIMESTAMP WITH TIME ZONE NOT NULL,
            detail TEXT NOT NULL, PRIMARY KEY (id));
        CREATE INDEX ix_instance_event_pool ON instance_event (pool);
        CREATE INDEX ix_instance_event_instance_id ON instance_event (instance_id);
        CREATE TABLE tick (id SERIAL NOT NULL, pool VARCHAR NOT NULL, at TIMESTAMP WITH TIME ZONE NOT NULL,
            direction VARCHAR NOT NULL, desired INTEGER, ready INTEGER, booting INTEGER, draining INTEGER,
            launch INTEGER NOT NULL, summary VARCHAR NOT NULL, inputs TEXT NOT NULL, decision TEXT NOT NULL,
            error TEXT, PRIMARY KEY (id));
        CREATE INDEX ix_tick_at ON tick (at);
        CREATE INDEX ix_tick_pool ON tick (pool);
    """,
}

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def _first_release_database(url: str) -> None:
    """Create the first release's tables with one tick, one instance and the engine memory in them."""
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        for statement in FIRST_RELEASE_DDL[engine.dialect.name].split(";"):
            if statement.strip():
                conn.execute(sqlalchemy.text(statement))
        conn.execute(
            sqlalchemy.text(
                "INSERT INTO tick (pool, at, direction, desired, launch, summary, inputs, decision) "
                "VALUES ('asr', :at, 'out', 3, 1, 'out 2→3', '{}', '{\"summary\": \"out 2→3\"}')"
            ),
            {"at": T0},
        )
        conn.execute(
            sqlalchemy.text(
                "INSERT INTO instance_event (pool, instance_id, state, at, detail) "
                "VALUES ('asr', 'i-1', 'serving', :at, '{}')"
            ),
            {"at": T0},
        )
        conn.execute(
            sqlalchemy.text(
                "INSERT INTO engine_memory (pool, memory, updated_at) VALUES ('asr', '{\"n\": 1}', :at)"
            ),
            {"at": T0},
        )
    engine.dispose()


def _indexes(url: str, table: str) -> set[str]:
    engine = sqlalchemy.create_engine(url)
    try:
        return {str(i["name"]) for i in sqlalchemy.inspect(engine).get_indexes(table)}
    finally:
        engine.dispose()


def test_first_release_store_is_upgraded_on_open_keeping_its_records(empty_database: str) -> None:
    """A store the first release created (no alembic_version) is stamped at the baseline and upgraded
    to head when the controller opens it; its ticks, instances and memory are all still there."""
    _first_release_database(empty_database)
    assert "ix_tick_pool_at" not in _indexes(empty_database, "tick")
    store = SqlStore(empty_database)
    try:
        assert current_revision(store.engine) == head_revision() == "0004"
        assert [t["decision"]["summary"] for t in store.recent_ticks("asr")] == ["out 2→3"]
        assert store.lifecycles("asr") == {"i-1": (Lifecycle.SERVING, T0)}
        assert store.load_memory("asr") == {"n": 1}
    finally:
        store.close()
    indexes = _indexes(empty_database, "tick")
    assert "ix_tick_pool_at" in indexes and "ix_tick_pool" not in indexes


def test_store_upgrade_command_from_the_baseline_revision(empty_database: str) -> None:
    """`autoscaler store upgrade` takes a store at revision 0001 to head and says so; again, a no-op."""
    engine = sqlalchemy.create_engine(empty_database)
    assert upgrade(engine, "0001") == (None, "0001")
    engine.dispose()
    runner = CliRunner()
    first = runner.invoke(app, ["store", "upgrade", "--store", empty_database])
    assert first.exit_code == 0, first.output
    assert "from revision 0001 to 0004" in first.stdout
    again = runner.invoke(app, ["store", "upgrade", "--store", empty_database])
    assert again.exit_code == 0 and "already at revision 0004" in again.stdout
    revision = runner.invoke(app, ["store", "revision", "--store", empty_database])
    assert "store: 0004; this release: 0004" in revision.stdout


def test_migrations_at_head_match_the_models(empty_database: str) -> None:
    """An empty database migrated to head has exactly the tables and indexes the models declare."""
    store = SqlStore(empty_database)
    try:
        with store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    finally:
        store.close()
    assert diff == []


def test_prune_keeps_recent_ticks_memory_and_live_instances(empty_database: str) -> None:
    """prune deletes old ticks and terminated instances' records; recent ticks, memory and live nodes stay."""
    store = SqlStore(empty_database)
    try:
        for day in range(40):
            store.record_tick("asr", T0 + timedelta(days=day), {}, {"desired": day}, {"day": day})
        store.record_tick("ocr", T0, {}, {"desired": 1}, {})
        store.record_lifecycle("asr", "i-old", Lifecycle.SERVING, T0)
        store.record_lifecycle("asr", "i-old", Lifecycle.TERMINATED, T0 + timedelta(days=1))
        store.record_lifecycle("asr", "i-live", Lifecycle.SERVING, T0)
        result = store.prune(T0 + timedelta(days=30), pool="asr")
        assert (result.ticks, result.instance_events) == (30, 2)
        assert len(store.recent_ticks("asr", limit=None)) == 10
        assert len(store.recent_ticks("ocr")) == 1  # another pool is left alone
        assert set(store.lifecycles("asr")) == {"i-live"}
        assert store.load_memory("asr") == {"day": 39}
    finally:
        store.close()


def test_prune_command_older_than(empty_database: str) -> None:
    """`autoscaler store prune --older-than 30d` deletes what is older and reports the counts."""
    store = SqlStore(empty_database)
    now = datetime.now(UTC)
    for age in (45, 31, 29, 1):
        store.record_tick("asr", now - timedelta(days=age), {}, {"desired": age}, {})
    store.close()
    args = ["store", "prune", "--older-than", "30d", "--json", "--store", empty_database]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert '"ticks": 2' in result.stdout
    reader = SqlStore(empty_database, readonly=True)
    assert [t["desired"] for t in reader.recent_ticks("asr", None)] == [1, 29]
    reader.close()


def test_upgrade_from_0003_adds_the_intent_table_keeping_records(empty_database: str) -> None:
    """A store at revision 0003 (pause, no intents) is upgraded to 0004 on open: its ticks and pauses
    stay, and intents can be recorded and read back."""
    engine = sqlalchemy.create_engine(empty_database)
    upgrade(engine, "0003")
    with engine.begin() as conn:
        conn.execute(
            sqlalchemy.text(
                "INSERT INTO tick (pool, at, direction, desired, launch, summary, inputs, decision) "
                "VALUES ('asr', :at, 'out', 3, 1, 'out 2→3', '{}', '{}')"
            ),
            {"at": T0},
        )
        conn.execute(
            sqlalchemy.text(
                "INSERT INTO pool_pause (pool, paused, reason, at) VALUES ('asr', true, 'x', :at)"
            ),
            {"at": T0},
        )
    assert "intent" not in sqlalchemy.inspect(engine).get_table_names()
    engine.dispose()
    store = SqlStore(empty_database)
    try:
        assert current_revision(store.engine) == "0004"
        assert [t["summary"] for t in store.recent_ticks("asr")] == ["out 2→3"]
        assert (store.pause_state("asr") or {}).get("paused") is True
        intent = store.open_intent("asr", IntentKind.TERMINATE, T0, instance_ids=("i-1",))
        assert [i.id for i in store.intents("asr", open_only=True)] == [intent]
    finally:
        store.close()
