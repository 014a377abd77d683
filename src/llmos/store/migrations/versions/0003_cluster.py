"""the cluster: deployment placement fields, nodes, replicas, events, leases

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("resources", sa.JSON(), nullable=False,
                                   server_default="{}"))
        batch.add_column(sa.Column("node_selector", sa.JSON(), nullable=False,
                                   server_default="{}"))
        batch.add_column(sa.Column("strategy", sa.String(16), nullable=False,
                                   server_default="spread"))
        batch.add_column(sa.Column("anti_affinity", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("generation", sa.Integer(), nullable=False,
                                   server_default="1"))
        batch.add_column(sa.Column("message", sa.Text(), nullable=True))
        batch.add_column(sa.Column("rebalance", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("aliases", sa.JSON(), nullable=False,
                                   server_default="[]"))
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("capacity", sa.JSON(), nullable=False),
        sa.Column("cordoned", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("epoch", sa.String(64), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(160), primary_key=True),
        sa.Column("project", sa.String(64), nullable=False),
        sa.Column("deployment", sa.String(128), nullable=False, index=True),
        sa.Column("node", sa.String(128), nullable=False, index=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(300), nullable=False),
        sa.Column("engine_settings", sa.JSON(), nullable=False),
        sa.Column("reserved", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("rss", sa.Integer(), nullable=False),
        sa.Column("restarts", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float(), nullable=False, index=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("project", sa.String(64), nullable=False),
        sa.Column("deployment", sa.String(128), nullable=True, index=True),
        sa.Column("node", sa.String(128), nullable=True, index=True),
        sa.Column("replica", sa.String(160), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("term", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    for table in ("leases", "events", "replicas", "nodes"):
        op.drop_table(table)
    with op.batch_alter_table("deployments") as batch:
        for column in ("aliases", "rebalance", "message", "generation", "priority", "anti_affinity",
                       "strategy", "node_selector", "resources"):
            batch.drop_column(column)
