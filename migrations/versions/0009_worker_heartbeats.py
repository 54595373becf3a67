"""Every worker's heartbeat: worker_models gains role, jobs in flight and the last error, so
/v1/workers shows training and webhook workers too.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 02:15:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("worker_models") as batch:
        batch.add_column(sa.Column("role", sa.String(64), nullable=True))
        batch.add_column(sa.Column("in_flight", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("last_error", sa.Text(), nullable=True))
        batch.add_column(sa.Column("last_error_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("worker_models") as batch:
        for name in ("last_error_at", "last_error", "in_flight", "role"):
            batch.drop_column(name)
