"""autoscaling: a deployment's bounds and objective, and the autoscaler's last look

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("autoscale", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("autoscale_status", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("autoscale_status")
        batch.drop_column("autoscale")
