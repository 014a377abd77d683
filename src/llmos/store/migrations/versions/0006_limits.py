"""rate limits, quotas and usage

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("limits", sa.JSON(), nullable=False, server_default="{}"))
    op.create_table(
        "project_limits",
        sa.Column("project", sa.String(64), primary_key=True),
        sa.Column("limits", sa.JSON(), nullable=False),
        sa.Column("changed_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "usage",
        sa.Column("scope", sa.String(96), primary_key=True),
        sa.Column("kind", sa.String(1), primary_key=True),
        sa.Column("start", sa.Integer(), primary_key=True),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
    )
    op.create_table(
        "in_flight",
        sa.Column("gateway", sa.String(64), primary_key=True),
        sa.Column("scope", sa.String(96), primary_key=True),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    for table in ("in_flight", "usage", "project_limits"):
        op.drop_table(table)
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("limits")
