"""Datasets, training runs, the model registry and what each inference worker serves; webhook
deliveries get a sequence number (progress events repeat).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 03:45:39
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("archive_key", sa.String(length=256), nullable=False),
        sa.Column("format", sa.String(length=8), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("unpacked_bytes", sa.BigInteger(), nullable=False),
        sa.Column(
            "splits",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("captions", sa.Integer(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
    )
    op.create_index("ix_datasets_owner_created", "datasets", ["owner", "created_at"], unique=False)
    op.create_table(
        "model_versions",
        sa.Column("number", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("bundle_key", sa.String(length=256), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("parent", sa.Integer(), nullable=True),
        sa.Column("training_run_id", sa.Uuid(), nullable=True),
        sa.Column(
            "dataset",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("encoder_weights", sa.String(length=256), nullable=False),
        sa.Column("encoder_fingerprint", sa.String(length=32), nullable=False),
        sa.Column(
            "metrics",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["parent"],
            ["model_versions.number"],
            name=op.f("fk_model_versions_parent_model_versions"),
        ),
        sa.PrimaryKeyConstraint("number", name=op.f("pk_model_versions")),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "uq_model_versions_active",
        "model_versions",
        ["active"],
        unique=True,
        postgresql_where=sa.text("active"),
        sqlite_where=sa.text("active"),
    )
    op.create_table(
        "worker_models",
        sa.Column("worker", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=True),
        sa.Column("refused_version", sa.String(length=64), nullable=True),
        sa.Column("refused_reason", sa.Text(), nullable=True),
        sa.Column("swap_ms", sa.Float(), nullable=True),
        sa.Column("swapped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("worker", name=op.f("pk_worker_models")),
    )
    op.create_table(
        "training_runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column(
            "dataset",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("dataset_id", sa.Uuid(), nullable=True),
        sa.Column(
            "hyperparameters",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("base_version", sa.Integer(), nullable=True),
        sa.Column(
            "promotion",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column(
            "webhook_events",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "progress",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "history",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("progress_events", sa.Integer(), nullable=False),
        sa.Column("progress_announced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("model_version", sa.Integer(), nullable=True),
        sa.Column(
            "promotion_result",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')",
            name=op.f("ck_training_runs_status"),
        ),
        sa.ForeignKeyConstraint(
            ["base_version"],
            ["model_versions.number"],
            name=op.f("fk_training_runs_base_version_model_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_training_runs_dataset_id_datasets")
        ),
        sa.ForeignKeyConstraint(
            ["model_version"],
            ["model_versions.number"],
            name=op.f("fk_training_runs_model_version_model_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_runs")),
    )
    op.create_index(
        "ix_training_runs_owner_created", "training_runs", ["owner", "created_at"], unique=False
    )
    op.create_index(
        "ix_training_runs_status_lease",
        "training_runs",
        ["status", "lease_expires_at"],
        unique=False,
    )
    # Batch mode: SQLite changes constraints by copying the table; Postgres alters in place.
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("sequence", sa.Integer(), server_default="0", nullable=False))
        batch.drop_constraint(op.f("uq_deliveries_resource_id_event"), type_="unique")
        batch.create_unique_constraint(
            op.f("uq_deliveries_resource_id_event_sequence"), ["resource_id", "event", "sequence"]
        )


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_constraint(op.f("uq_deliveries_resource_id_event_sequence"), type_="unique")
        batch.create_unique_constraint(
            op.f("uq_deliveries_resource_id_event"), ["resource_id", "event"]
        )
        batch.drop_column("sequence")
    op.drop_index("ix_training_runs_status_lease", table_name="training_runs")
    op.drop_index("ix_training_runs_owner_created", table_name="training_runs")
    op.drop_table("training_runs")
    op.drop_table("worker_models")
    op.drop_index(
        "uq_model_versions_active",
        table_name="model_versions",
        postgresql_where=sa.text("active"),
        sqlite_where=sa.text("active"),
    )
    op.drop_table("model_versions")
    op.drop_index("ix_datasets_owner_created", table_name="datasets")
    op.drop_table("datasets")
