"""Index jobs by when they ended, for the retention purge (oldest first, a page at a time).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 23:10:00
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_finished_at", "jobs", ["finished_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_finished_at", "jobs")
