"""ix_jobs_queued: the claim's fair pick finds the owners with queued jobs and each one's oldest;
jobs.image_data: a small single upload kept in the row (stored as is: PNG and JPEG bytes do not
compress, so Postgres is told not to try).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 06:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

QUEUED = sa.text("status = 'queued'")


def upgrade() -> None:
    op.add_column("jobs", sa.Column("image_data", sa.LargeBinary(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE jobs ALTER COLUMN image_data SET STORAGE EXTERNAL")
    op.create_index(
        "ix_jobs_queued",
        "jobs",
        ["owner", "created_at", "id"],
        postgresql_where=QUEUED,
        sqlite_where=QUEUED,
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_queued", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("image_data")
