"""model_versions.architecture: each version's decoder architecture and sizes (its bundle's
model config), so the registry tells a GRU from a Transformer. Every earlier version is a GRU.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-28 09:00:00
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.add_column("model_versions", sa.Column("architecture", JSON, nullable=True))
    versions = sa.table("model_versions", sa.column("architecture", JSON))
    op.execute(versions.update().values(architecture={"decoder": "gru"}))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("architecture")
