"""The model registry: versions, the active one, and the inference workers' rollout."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.training import Epoch


class Encoder(BaseModel):
    """The image encoder a version's decoder was trained on (workers refuse a mismatch)."""

    weights: str = Field(description="the encoder's weights (a file name, or seed:N)")
    fingerprint: str


class Architecture(BaseModel):
    """A version's decoder: its architecture and sizes, as its bundle's config says (versions
    registered before architectures were recorded show only {"decoder": "gru"})."""

    model_config = ConfigDict(extra="allow")
    decoder: str = Field(description="gru or transformer")
    embedding_dim: int | None = None
    units: int | None = Field(None, description="GRU: its state size")
    attention_units: int | None = Field(None, description="GRU: its attention's size")
    layers: int | None = Field(None, description="Transformer: decoder blocks")
    heads: int | None = Field(None, description="Transformer: attention heads per block")
    ff_units: int | None = Field(None, description="Transformer: feed-forward size")
    dropout: float | None = Field(None, description="Transformer: dropout in training")
    vocab_size: int | None = None
    max_length: int | None = Field(None, description="default cap on words at inference")


class Bundle(BaseModel):
    """Where the version's files are kept."""

    key: str = Field(description="its folder in the blob store")
    digest: str = Field(description="sha256 of the decoder weights")


class ModelLinks(BaseModel):
    """Links (paths, or absolute with PUBLIC_URL)."""

    self: str
    promote: str


class ModelVersion(BaseModel):
    """A registered version: where it came from, how well it scored, whether it serves."""

    version: str = Field(description="v1, v2, …")
    active: bool = Field(description="the one the workers serve")
    parent: str | None = Field(description="the version it was trained from (null: fresh)")
    training_run_id: str | None = Field(description="the run that made it (null: imported)")
    dataset: dict[str, Any] | None = Field(
        description="what it was trained on, as its run "
        "named it (an imported one: its folder's name)"
    )
    architecture: Architecture | None = Field(
        description="its decoder's architecture and sizes (null: not known)"
    )
    encoder: Encoder
    metrics: dict[str, float | None] = Field(description="validation metrics of its best epoch")
    best_epoch: int | None
    calibration_error: float | None = Field(
        description="expected calibration error of its captions' confidence after calibration, "
        "on held-out images (null: a version without calibration)"
    )
    ood_threshold: float | None = Field(
        description="the out-of-distribution score above which its jobs are flagged (null: a "
        "version without an OOD score)"
    )
    history: list[Epoch] = Field(description="validation metrics per epoch")
    bundle: Bundle
    created_at: str
    promoted_at: str | None = Field(description="its last promotion (null: never)")
    urls: ModelLinks


class ModelList(BaseModel):
    """Every version, newest first, and which one is active."""

    active: str | None = Field(description="the version served (null: none yet)")
    models: list[ModelVersion]


class Refusal(BaseModel):
    """The active version a worker would not load, and why."""

    version: str
    reason: str | None


class WorkerError(BaseModel):
    """A worker's last failed task."""

    message: str
    at: str | None


class Worker(BaseModel):
    """One worker's heartbeat; for an inference worker, what it serves."""

    worker: str = Field(description="its node name, the host replaced by a digest")
    model_version: str | None = Field(description="the version it serves (null: none)")
    refused: Refusal | None
    swap_ms: float | None = Field(description="download, load and warm-up of its last swap")
    swapped_at: str | None
    seen_at: str = Field(description="its last heartbeat")
    role: str = Field(description="the queues it consumes: inference, training, webhooks")
    in_flight: int | None = Field(description="tasks it was running at that heartbeat")
    away: list[str] = Field(
        description="dependencies it found away at that heartbeat (`blob store`: its jobs wait)"
    )
    last_error: WorkerError | None


class WorkerList(BaseModel):
    """Workers of every role seen lately, and the active version inference workers serve."""

    active: str | None
    workers: list[Worker]
