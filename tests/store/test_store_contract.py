"""Every store implementation passes the same contract: memory, SQLite file, PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy

from autoscaler.errors import StoreError
from autoscaler.store import MemoryStore, SqlStore
from autoscaler.testing.store_contract import StoreContract

POSTGRES_URL = os.environ.get("AUTOSCALER_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


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
        admin = sqlalchemy.create_engine(POSTGRES_URL)
        schema = f"t_{uuid.uuid4().hex[:12]}"
        try:
            with admin.begin() as conn:
                conn.execute(sqlalchemy.text(f'CREATE SCHEMA "{schema}"'))
        except sqlalchemy.exc.OperationalError as exc:
            if os.environ.get("CI"):
                raise
            pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_URL}: {exc}")
        sep = "&" if "?" in POSTGRES_URL else "?"
        store = SqlStore(f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}")
        yield store
        store.close()
        with admin.begin() as conn:
            conn.execute(sqlalchemy.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


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
