"""Fence each claim with an attempt token; keep attention in the job row; pack batch images.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 19:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("attempt_token", sa.Uuid(), nullable=True))
    op.add_column("jobs", sa.Column("image_offset", sa.BigInteger(), nullable=True))
    op.add_column("jobs", sa.Column("attention", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    # Batch mode rebuilds the table where the database cannot drop a column in place.
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("attention")
        batch.drop_column("image_offset")
        batch.drop_column("attempt_token")
