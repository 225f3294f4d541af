"""Schema migrations with Alembic, configured in code (no ``alembic.ini`` to ship or find).

``upgrade(engine)`` brings a store to the newest revision in one transaction: an empty database gets
every revision from the baseline; a database created by the first release (the tables, no
``alembic_version``) is stamped at the baseline first, since its schema is the baseline's. On
PostgreSQL a transaction-scoped advisory lock makes two controllers starting at once take turns.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: The revision whose schema the first release created without Alembic.
BASELINE = "0001"
#: An arbitrary, fixed key for ``pg_advisory_xact_lock`` while migrating.
_PG_LOCK_KEY = 7_214_530_113


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the store's migrations, optionally bound to an open connection."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this release knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None  # the baseline always exists
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Bring the database to ``revision``; return the revisions before and after."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        before = MigrationContext.configure(connection).get_current_revision()
        config = alembic_config(connection)
        if before is None and inspect(connection).has_table("tick"):
            command.stamp(config, BASELINE)  # created by the first release, before migrations
            before = BASELINE
        command.upgrade(config, revision)
        after = MigrationContext.configure(connection).get_current_revision()
    return before, after
