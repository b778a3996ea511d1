"""cases.stored_photo_sha256: the photo kept with consent (issue 18, second slice)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 23:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stored_photo_sha256", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_cases_stored_photo_sha256"), ["stored_photo_sha256"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cases_stored_photo_sha256"))
        batch_op.drop_column("stored_photo_sha256")
