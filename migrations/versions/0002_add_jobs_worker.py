"""Record which worker process claimed each job.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 00:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("worker", sa.String(length=128), nullable=True))


def downgrade() -> None:
    # Batch mode rebuilds the table where the database cannot drop a column in place.
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("worker")
