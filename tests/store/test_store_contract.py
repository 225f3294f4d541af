"""Every store implementation passes the same contract: memory, SQLite file, PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from autoscaler.errors import StoreError
from autoscaler.store import MemoryStore, SqlStore
from autoscaler.testing.postgres import fresh_schema
from autoscaler.testing.store_contract import StoreContract


class TestMemoryStore(StoreContract):
    """The recording fake."""

    @pytest.fixture
    def store(self) -> MemoryStore:
        """An empty in-memory store."""
        return MemoryStore()


class TestSqliteStore(StoreContract):
    """The default: a SQLite file."""

    @pytest.fixture
    def store(self, tmp_path: os.PathLike[str]) -> Iterator[SqlStore]:
        """A store on a new SQLite file."""
        store = SqlStore(f"sqlite:///{tmp_path}/nested/dir/autoscaler.db")
        yield store
        store.close()


class TestPostgresStore(StoreContract):
    """PostgreSQL, for several controllers sharing state (the local server, a fresh schema per test)."""

    @pytest.fixture
    def store(self) -> Iterator[SqlStore]:
        """A store in a new schema of the local PostgreSQL's `test` database."""
        with fresh_schema() as schema:
            store = SqlStore(schema.url)
            yield store
            store.close()


def test_unreachable_database_is_a_store_error() -> None:
    """A database that cannot be reached raises StoreError naming it, with the password masked."""
    with pytest.raises(StoreError) as caught:
        SqlStore("postgresql+psycopg://user:secret@127.0.0.1:1/none?connect_timeout=2")
    assert "secret" not in str(caught.value)


def test_sqlite_file_is_shared_between_store_objects(tmp_path: os.PathLike[str]) -> None:
    """A second store object on the same file (a restarted controller) sees the first one's records."""
    url = f"sqlite:///{tmp_path}/a.db"
    first = SqlStore(url)
    first.record_tick("p", datetime.now(UTC), {}, {"desired": 2}, {"missing_ticks": 1})
    first.close()
    assert SqlStore(url).load_memory("p") == {"missing_ticks": 1}
