"""Caption corrections users send (POST /v1/jobs/{id}/feedback), kept per tenant with their
own copy of the image, for training runs to learn from.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27 05:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("image_key", sa.String(256), nullable=False),
        sa.Column("caption", sa.Text(), nullable=False),
        sa.Column("model_caption", sa.Text(), nullable=True),
        sa.Column("model_version", sa.String(64), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )
    op.create_index("ix_feedback_owner_created", "feedback", ["owner", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_feedback_owner_created", table_name="feedback")
    op.drop_table("feedback")
