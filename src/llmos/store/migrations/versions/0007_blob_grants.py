"""blob grants: the blobs a project's keys uploaded

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blob_grants",
        sa.Column("digest", sa.String(80), primary_key=True),
        sa.Column("project", sa.String(64), primary_key=True),
        sa.Column("granted_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("blob_grants")
