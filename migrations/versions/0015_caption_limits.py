"""jobs.confidence and jobs.ood: a caption's calibrated probability of being right, and its
image's out-of-distribution score ({"score", "threshold", "flagged"}); null for models without
them and for jobs from before.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 16:30:00
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.add_column("jobs", sa.Column("confidence", sa.Float(), nullable=True))
    op.add_column("jobs", sa.Column("ood", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("ood")
        batch.drop_column("confidence")
