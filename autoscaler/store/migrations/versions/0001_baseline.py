"""Baseline: the store's schema as the first release created it (tick, instance_event, engine_memory).

A database created by that release (tables present, no ``alembic_version``) is stamped at this
revision and upgraded from here.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the three tables and their indexes."""
    op.create_table(
        "tick",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("pool", sa.String(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("direction", sa.String(), nullable=False),
        sa.Column("desired", sa.Integer(), nullable=True),
        sa.Column("ready", sa.Integer(), nullable=True),
        sa.Column("booting", sa.Integer(), nullable=True),
        sa.Column("draining", sa.Integer(), nullable=True),
        sa.Column("launch", sa.Integer(), nullable=False),
        sa.Column("summary", sa.String(), nullable=False),
        sa.Column("inputs", sa.Text(), nullable=False),
        sa.Column("decision", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_tick_pool", "tick", ["pool"])
    op.create_index("ix_tick_at", "tick", ["at"])
    op.create_table(
        "instance_event",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("pool", sa.String(), nullable=False),
        sa.Column("instance_id", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
    )
    op.create_index("ix_instance_event_pool", "instance_event", ["pool"])
    op.create_index("ix_instance_event_instance_id", "instance_event", ["instance_id"])
    op.create_table(
        "engine_memory",
        sa.Column("pool", sa.String(), primary_key=True),
        sa.Column("memory", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Drop everything."""
    op.drop_table("engine_memory")
    op.drop_table("instance_event")
    op.drop_table("tick")
