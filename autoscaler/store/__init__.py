"""Where decisions and lifecycles are recorded: ``SqlStore`` (SQLite or PostgreSQL) and ``MemoryStore``."""

from autoscaler.store.memory import MemoryStore
from autoscaler.store.sql import SqlStore, open_store

__all__ = ["MemoryStore", "SqlStore", "open_store"]
