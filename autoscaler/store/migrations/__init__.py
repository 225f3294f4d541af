"""Alembic migrations of the store's schema; run by ``autoscaler.store.migrate``."""
