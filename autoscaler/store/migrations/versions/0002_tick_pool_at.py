"""Index tick (pool, at) and instance_event (pool, at): history --since and retention read by both.

``history --since`` and pruning select one pool's ticks by time; with only single-column indexes a
year of ticks is scanned per query. The composite indexes also serve lookups by pool alone, so the
old ``ix_tick_pool`` and ``ix_instance_event_pool`` go.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the composite indexes, drop the one they make redundant."""
    op.create_index("ix_tick_pool_at", "tick", ["pool", "at"])
    op.drop_index("ix_tick_pool", table_name="tick")
    op.create_index("ix_instance_event_pool_at", "instance_event", ["pool", "at"])
    op.drop_index("ix_instance_event_pool", table_name="instance_event")


def downgrade() -> None:
    """Back to the single-column indexes."""
    op.create_index("ix_instance_event_pool", "instance_event", ["pool"])
    op.drop_index("ix_instance_event_pool_at", table_name="instance_event")
    op.create_index("ix_tick_pool", "tick", ["pool"])
    op.drop_index("ix_tick_pool_at", table_name="tick")
