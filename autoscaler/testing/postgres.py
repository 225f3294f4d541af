"""A fresh schema in the local PostgreSQL for tests that need the real database.

Every PostgreSQL test gets its own schema in the `test` database (``scripts/test.sh`` starts the
server), so tests never see each other's tables and a failed test leaves nothing behind.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import sqlalchemy

#: The database the tests use; ``AUTOSCALER_TEST_POSTGRES`` points them elsewhere.
POSTGRES_URL = os.environ.get("AUTOSCALER_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True)
class Schema:
    """A schema made for one test: its name, a store URL whose search path is it, and the admin engine."""

    name: str
    url: str
    admin: sqlalchemy.Engine


@contextmanager
def fresh_schema() -> Iterator[Schema]:
    """Create a new schema, yield it, drop it (with everything in it) afterwards.

    Skips the test when PostgreSQL is not reachable, except in CI (``CI`` set), where that fails it.
    """
    admin = sqlalchemy.create_engine(POSTGRES_URL)
    name = f"t_{uuid.uuid4().hex[:12]}"
    try:
        with admin.begin() as conn:
            conn.execute(sqlalchemy.text(f'CREATE SCHEMA "{name}"'))
    except sqlalchemy.exc.OperationalError as exc:
        admin.dispose()
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_URL}: {exc}")
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield Schema(name=name, url=f"{POSTGRES_URL}{sep}options=-csearch_path%3D{name}", admin=admin)
    finally:
        with admin.begin() as conn:
            conn.execute(sqlalchemy.text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()
