"""worker_models.away: the dependencies a worker finds away at its heartbeat (the blob store
while its jobs wait for it), so /v1/workers shows an outage as the worker sees it; stray_blobs:
blobs a refused submission or a delete could not remove (the store away), which the sweeper
deletes once it is back.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 13:00:00
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.add_column("worker_models", sa.Column("away", JSON, nullable=True))
    op.create_table(
        "stray_blobs",
        sa.Column("key", sa.String(512), primary_key=True),
        sa.Column("noted_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("stray_blobs")
    with op.batch_alter_table("worker_models") as batch:
        batch.drop_column("away")
