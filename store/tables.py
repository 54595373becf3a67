"""The database tables: jobs and batches, webhook deliveries and secrets, and the training side
(datasets, training runs, the model registry and the inference workers serving it)."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from core.options import DEFAULT_BEAM_SIZE, DEFAULT_MAX_LENGTH

# Named constraints, so migrations can drop and downgrade them by name on every database.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
Json = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    """Declarative base with the naming convention."""

    metadata = MetaData(naming_convention=NAMING)


class Lifecycle(enum.StrEnum):
    """The statuses of something that is queued, runs, then ends for good."""

    @property
    def is_terminal(self) -> bool:
        """A terminal status is final: nothing overwrites it."""
        return self.value not in ("queued", "running")


class JobStatus(Lifecycle):
    """queued → running → succeeded | failed | canceled; aborted: deadline passed before start."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    ABORTED = "aborted"


TERMINAL = tuple(s.value for s in JobStatus if s.is_terminal)


class DeliveryStatus(enum.StrEnum):
    """pending → sending → delivered, or back to pending (a retry), or failed for good."""

    PENDING = "pending"  # waiting for next_attempt_at
    SENDING = "sending"  # an attempt is in flight, under a lease
    DELIVERED = "delivered"  # the endpoint answered 2xx
    FAILED = "failed"  # out of attempts, or the endpoint answered 410 Gone


def _status_check(statuses: type[enum.StrEnum]) -> str:
    return "status IN (" + ", ".join(f"'{s.value}'" for s in statuses) + ")"


def utcnow() -> datetime:
    """The current time in UTC, timezone-aware."""
    return datetime.now(UTC)


def as_utc(moment: datetime | None) -> datetime | None:
    """A timestamp read back from the database as aware UTC (SQLite drops the zone)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _now_column(index: bool = False) -> Mapped[datetime]:
    return mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now(), index=index
    )


class Batch(Base):
    """Up to 100 jobs submitted together; its status is derived from theirs."""

    __tablename__ = "batches"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(Integer)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_events: Mapped[list[str] | None] = mapped_column(Json)
    created_at: Mapped[datetime] = _now_column()


class Job(Base):
    """One image to caption: request, lifecycle, result, timings."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_status_check(JobStatus), name="status"),
        CheckConstraint("attempts >= 0", name="attempts"),
        Index("ix_jobs_owner_created", "owner", "created_at", "id"),  # listing, newest first
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),  # the sweeper's scan
        Index("ix_jobs_finished_at", "finished_at"),  # retention: the oldest ended jobs first
        # The claim's fair pick: owners with queued jobs, and each one's oldest (store.jobs).
        Index(
            "ix_jobs_queued",
            "owner",
            "created_at",
            "id",
            postgresql_where=text("status = 'queued'"),
            sqlite_where=text("status = 'queued'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner: Mapped[str] = mapped_column(String(64))
    batch_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("batches.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(128))  # the process that claimed it last
    # Set by each claim: only the attempt holding it may finish, fail or release the job.
    attempt_token: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The request
    image_key: Mapped[str] = mapped_column(String(256))  # its own object, or a batch's pack
    # A small single upload's bytes, kept here rather than under image_key (no S3 PUT or GET);
    # read with the claim, and by the attention picture
    image_data: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    image_offset: Mapped[int | None] = mapped_column(BigInteger)  # where it starts in a pack
    image_bytes: Mapped[int] = mapped_column(Integer)
    image_format: Mapped[str] = mapped_column(String(16))
    image_width: Mapped[int] = mapped_column(Integer)
    image_height: Mapped[int] = mapped_column(Integer)
    # The worker fetches the image from here into image_key (the size fields stay 0 until then)
    image_url: Mapped[str | None] = mapped_column(Text)
    beam_size: Mapped[int] = mapped_column(Integer, default=DEFAULT_BEAM_SIZE)
    max_length: Mapped[int] = mapped_column(Integer, default=DEFAULT_MAX_LENGTH)
    # Above 0 the words are sampled, with the seed (0 … 2³²-1) of that noise
    temperature: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    seed: Mapped[int | None] = mapped_column(BigInteger)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_events: Mapped[list[str] | None] = mapped_column(Json)
    # The result
    caption: Mapped[str | None] = mapped_column(Text)
    tokens: Mapped[list[str] | None] = mapped_column(Json)
    token_log_probs: Mapped[list[float] | None] = mapped_column(Json)
    model_version: Mapped[str | None] = mapped_column(String(64))
    attention_key: Mapped[str | None] = mapped_column(String(256))  # jobs from before 0005
    # The (T, 64) float16 weights as .npy bytes (about 1.2 KB), read only when asked for.
    attention: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    attention_shape: Mapped[list[int] | None] = mapped_column(Json)
    # The caption's limits (null: a model without them): the calibrated probability it is
    # right, and the out-of-distribution score {"score", "threshold", "flagged"}
    confidence: Mapped[float | None] = mapped_column(Float)
    ood: Mapped[dict | None] = mapped_column(Json)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    # Timings
    queue_ms: Mapped[float | None] = mapped_column(Float)  # created → started
    predict_ms: Mapped[float | None] = mapped_column(Float)  # the batch's forward pass
    total_ms: Mapped[float | None] = mapped_column(Float)  # created → finished
    batch_size: Mapped[int | None] = mapped_column(Integer)  # jobs in its forward pass
    created_at: Mapped[datetime] = _now_column()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    @property
    def job_status(self) -> JobStatus:
        """The status as an enum."""
        return JobStatus(self.status)


_CURRENT = text("expires_at IS NULL")


class WebhookSecret(Base):
    """An owner's signing secret: the current one, or a rotated-out one valid until expires_at."""

    __tablename__ = "webhook_secrets"
    __table_args__ = (
        # At most one current secret per owner.
        Index(
            "uq_webhook_secrets_current",
            "owner",
            unique=True,
            postgresql_where=_CURRENT,
            sqlite_where=_CURRENT,
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(64))
    # Fernet token of whsec_ + base64 (HMAC needs it in clear, so it is encrypted, not hashed)
    secret: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _now_column()
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Delivery(Base):
    """One webhook message (one event of one resource), sent until it is delivered or given up."""

    __tablename__ = "deliveries"
    __table_args__ = (
        CheckConstraint(_status_check(DeliveryStatus), name="status"),
        # An event is announced once; progress events are numbered by `sequence`.
        UniqueConstraint("resource_id", "event", "sequence"),
        Index("ix_deliveries_status_next", "status", "next_attempt_at"),  # the sweeper's scan
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(16))  # job | batch | training_run
    resource_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    event: Mapped[str] = mapped_column(String(32))  # job.started, training_run.progress, …
    sequence: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    url: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)  # the JSON sent, the same bytes on every attempt
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # every attempt, replays included
    step: Mapped[int] = mapped_column(Integer, default=0)  # place in the retry schedule
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now_column()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    @property
    def message_id(self) -> str:
        """The `webhook-id` header: the same on every attempt and replay."""
        return f"msg_{self.id.hex}"


class DeliveryAttempt(Base):
    """One POST of a delivery: when, what came back, how long it took."""

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("deliveries.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)  # 1 for the first attempt
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    latency_ms: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer)  # None when no response came
    error: Mapped[str | None] = mapped_column(Text)  # why it failed, None on success
    response: Mapped[str | None] = mapped_column(Text)  # the start of the response body


class RunStatus(Lifecycle):
    """queued → running → succeeded | failed | canceled (a crashed run goes back to queued)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class Dataset(Base):
    """An uploaded COCO-format archive, checked on upload, stored as one blob."""

    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_owner_created", "owner", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    archive_key: Mapped[str] = mapped_column(String(256))
    format: Mapped[str] = mapped_column(String(8))  # zip | tar
    bytes: Mapped[int] = mapped_column(BigInteger)  # the archive
    unpacked_bytes: Mapped[int] = mapped_column(BigInteger)
    splits: Mapped[dict] = mapped_column(Json)  # {"train": {"images": n, "captions": m}, …}
    images: Mapped[int] = mapped_column(Integer)  # captioned images, all splits
    captions: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = _now_column()


def version_name(number: int | None) -> str | None:
    """A registry version's name, as jobs record it: v1, v2, … (None for None)."""
    return f"v{number}" if number is not None else None


class ModelVersion(Base):
    """A registered model: its bundle in the blob store and where it came from."""

    __tablename__ = "model_versions"
    __table_args__ = (
        # Exactly one version serves at a time (none before the first promotion).
        Index(
            "uq_model_versions_active",
            "active",
            unique=True,
            postgresql_where=text("active"),
            sqlite_where=text("active"),
        ),
        {"sqlite_autoincrement": True},  # a number is never reused, even after a rollback
    )

    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    bundle_key: Mapped[str] = mapped_column(String(256))  # models/v3/ (a folder of blobs)
    digest: Mapped[str] = mapped_column(String(64))  # sha256 of the decoder weights
    parent: Mapped[int | None] = mapped_column(ForeignKey("model_versions.number"))
    training_run_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)  # None when imported
    dataset: Mapped[dict | None] = mapped_column(Json)  # as the training run named it
    # The bundle's model config ({"decoder": "gru", "embedding_dim": …}); None: not known.
    architecture: Mapped[dict | None] = mapped_column(Json)
    encoder_weights: Mapped[str] = mapped_column(String(256))
    encoder_fingerprint: Mapped[str] = mapped_column(String(32))
    metrics: Mapped[dict] = mapped_column(Json)  # the bundle's metrics.json
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now_column()

    @property
    def version(self) -> str:
        """The version's name (v3)."""
        return version_name(self.number)


class TrainingRun(Base):
    """A request to train a model version, its progress, and what came of it."""

    __tablename__ = "training_runs"
    __table_args__ = (
        CheckConstraint(_status_check(RunStatus), name="status"),
        Index("ix_training_runs_owner_created", "owner", "created_at"),
        Index("ix_training_runs_status_lease", "status", "lease_expires_at"),  # the sweeper
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.QUEUED.value)
    # The request
    dataset: Mapped[dict] = mapped_column(Json)  # {"type": "shapes", "size", "seed"} | upload
    dataset_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("datasets.id"))
    hyperparameters: Mapped[dict] = mapped_column(Json)
    base_version: Mapped[int | None] = mapped_column(ForeignKey("model_versions.number"))
    promotion: Mapped[dict] = mapped_column(Json)  # {"policy": "if_better", "metric": "bleu4"}
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_events: Mapped[list[str] | None] = mapped_column(Json)
    # The execution
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    progress: Mapped[dict | None] = mapped_column(Json)  # the latest training.Progress
    history: Mapped[list[dict] | None] = mapped_column(Json)  # validation metrics per epoch
    progress_events: Mapped[int] = mapped_column(Integer, default=0)  # progress webhooks sent
    progress_announced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The outcome
    model_version: Mapped[int | None] = mapped_column(ForeignKey("model_versions.number"))
    promotion_result: Mapped[dict | None] = mapped_column(Json)  # promoted, and why (not)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now_column()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WorkerModel(Base):
    """A worker's heartbeat (every role): what it does now, and for inference workers what it
    serves, as it last reported (the rollout's progress)."""

    __tablename__ = "worker_models"

    worker: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_version: Mapped[str | None] = mapped_column(String(64))  # serving now
    refused_version: Mapped[str | None] = mapped_column(String(64))  # the active one, if refused
    refused_reason: Mapped[str | None] = mapped_column(Text)
    swap_ms: Mapped[float | None] = mapped_column(Float)  # download, load and warm-up, last swap
    swapped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    role: Mapped[str | None] = mapped_column(String(64))  # its queues: inference, training, …
    in_flight: Mapped[int | None] = mapped_column(Integer)  # tasks running at the heartbeat
    away: Mapped[list[str] | None] = mapped_column(Json)  # dependencies it found away then
    last_error: Mapped[str | None] = mapped_column(Text)  # its last failed task, if any
    last_error_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Feedback(Base):
    """A user's correction of a caption: the image (its own copy, so the job's retention does not
    take it), the caption it should have had, and what the model said."""

    __tablename__ = "feedback"
    __table_args__ = (Index("ix_feedback_owner_created", "owner", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid)  # no foreign key: the job may go first
    image_key: Mapped[str] = mapped_column(String(256))
    caption: Mapped[str] = mapped_column(Text)  # the correction
    model_caption: Mapped[str | None] = mapped_column(Text)  # what the model said
    model_version: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = _now_column()


class Scope(enum.StrEnum):
    """What an API key may do."""

    JOBS = "jobs"  # its tenant's jobs, batches, their attention and deliveries, webhook secret
    TRAINING = "training"  # its tenant's datasets and training runs
    ADMIN = "admin"  # promote and roll back versions, see workers, manage every tenant's keys


ALL_SCOPES = tuple(s.value for s in Scope)  # an admin key in the embedded mode and tests


class ApiKey(Base):
    """A tenant's API key, kept only as its SHA-256 digest (core.credentials says why)."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_tenant_created", "tenant", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200), default="")
    scopes: Mapped[list[str]] = mapped_column(Json)
    prefix: Mapped[str] = mapped_column(String(16))  # the key's first characters, to tell apart
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = _now_column()
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class StrayBlob(Base):
    """A blob that should not be there: stored (or perhaps stored: a PUT cut off may have
    landed) for a submission that was then refused, or left by a delete, because the store
    could not delete it then. The sweeper deletes it once the store is back."""

    __tablename__ = "stray_blobs"

    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    noted_at: Mapped[datetime] = _now_column()


class IdempotencyKey(Base):
    """A POST's `Idempotency-Key`: the request it was first used with, and its answer."""

    __tablename__ = "idempotency_keys"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))  # sha256 of method, path and body
    status_code: Mapped[int | None] = mapped_column(Integer)  # None while the first is handled
    headers: Mapped[dict | None] = mapped_column(Json)  # those replayed (Location, Content-Type)
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = _now_column(index=True)
