"""Intents: every world change is recorded before its call and completed after it (the executor).

A controller killed between a call and its record leaves the intent open; the next start reconciles
open intents against the provider's inventory (``autoscaler.executor.WorldExecutor.reconcile``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """One row per intent; reconcile reads a pool's open ones, history a tick's."""
    op.create_table(
        "intent",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("pool", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("tick_id", sa.Integer(), nullable=True),
        sa.Column("instance_ids", sa.Text(), nullable=False),
        sa.Column("token", sa.String(), nullable=True),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_intent_pool_status", "intent", ["pool", "status"])
    op.create_index("ix_intent_tick_id", "intent", ["tick_id"])


def downgrade() -> None:
    """Drop it."""
    op.drop_index("ix_intent_tick_id", table_name="intent")
    op.drop_index("ix_intent_pool_status", table_name="intent")
    op.drop_table("intent")
