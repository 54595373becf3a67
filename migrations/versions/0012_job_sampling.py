"""jobs.temperature and jobs.seed: a job may sample its words, with a seed so it repeats.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("temperature", sa.Float(), nullable=False, server_default="0"))
    op.add_column("jobs", sa.Column("seed", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("seed")
        batch.drop_column("temperature")
