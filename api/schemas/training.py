"""Training runs: what starting one may send, and what the API answers about them.

The request models are the one place a run's fields are typed, bounded and given their
defaults: the view reads the validated model, and /openapi.json documents the same models.
Every nested object refuses fields it does not know, as the body does.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)

from api.schemas.base import Strict, WebUrl, coded, event_names, refused
from api.schemas.jobs import Failure, WebhookTarget
from core.decoders import DECODERS, defaults_by_decoder, described_defaults, with_defaults
from core.formats import CAPTION_METRICS
from store.tables import RunStatus
from store.training import EVENTS

Metric = Literal[CAPTION_METRICS]  # type: ignore[valid-type]
Policy = Literal["never", "always", "if_better"]
Decoder = Literal[DECODERS]  # type: ignore[valid-type]
DEFAULT_METRIC = "bleu4"
DATASET_MUST_BE = (
    'dataset must be {"type": "shapes", "size": N}, {"type": "scenes", "size": N} '
    'or {"type": "upload", "id": DATASET_ID}'
)
DATASET_TYPES = ("shapes", "scenes", "upload")
WHOLE = 2**31 - 1
RunEvents = event_names(EVENTS, ("completed",))


class ShapesSet(Strict):
    """The built-in synthetic shapes set, generated with its size and seed."""

    type: Literal["shapes"]
    size: int = Field(1000, ge=20, le=100_000, description="captioned images generated")
    seed: int = Field(0, ge=0, le=WHOLE)


class ScenesSet(Strict):
    """The built-in synthetic scenes set (two groups of shapes and their relation), generated
    with its size and seed: harder than the shapes set."""

    type: Literal["scenes"]
    size: int = Field(1000, ge=20, le=100_000, description="captioned images generated")
    seed: int = Field(0, ge=0, le=WHOLE)


class UploadedSet(Strict):
    """A dataset uploaded to /v1/datasets (the caller's own)."""

    type: Literal["upload"]
    id: str = Field(description="the dataset's id")


def a_known_type(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """A dataset that is not an object of a known type is refused by saying what one is."""
    if not isinstance(value, dict) or value.get("type") not in DATASET_TYPES:
        raise refused("invalid_dataset", DATASET_MUST_BE)
    return handler(value)


DatasetChoice = Annotated[
    ShapesSet | ScenesSet | UploadedSet, Field(discriminator="type"), WrapValidator(a_known_type)
]


class Hyperparameters(Strict):
    """Training settings; each one left out takes its default (learning_rate: the decoder's)."""

    epochs: int = Field(10, ge=1, le=1000)
    batch_size: int = Field(64, ge=1, le=1024)
    learning_rate: float | None = Field(
        None,
        ge=1e-7,
        le=1.0,
        allow_inf_nan=False,
        description="Adam's; left out, the decoder's (a fine-tune: its base version's decoder's): "
        + described_defaults("learning_rate"),
        json_schema_extra={"x-default-by-decoder": defaults_by_decoder("learning_rate")},
    )
    vocab_size: int = Field(
        5000,
        ge=10,
        le=50_000,
        description="kept from the base model's vocabulary when there is one",
    )
    seed: int = Field(0, ge=0, le=WHOLE)
    patience: int = Field(
        3, ge=1, le=1000, description="early stopping: epochs without a better validation metric"
    )

    def applied(self, decoder: str) -> dict[str, Any]:
        """The settings a run of `decoder` trains with: each one left out that depends on the
        decoder (learning_rate) is `decoder`'s."""
        return with_defaults(self.model_dump(), decoder)


class ModelAsked(Strict):
    """A fresh run's decoder architecture; each size left out takes its default, which is the
    model's own (model/config.py's ModelConfig: a test holds them equal)."""

    decoder: Decoder = Field("gru", description="a GRU with attention, or a Transformer")
    embedding_dim: int = Field(
        256,
        ge=16,
        le=1024,
        description="image features and words are "
        "projected to this size (the Transformer's width: divisible by "
        "heads)",
    )
    units: int = Field(512, ge=16, le=2048, description="GRU: its state size")
    attention_units: int = Field(512, ge=16, le=2048, description="GRU: its attention's size")
    layers: int = Field(2, ge=1, le=8, description="Transformer: decoder blocks")
    heads: int = Field(1, ge=1, le=16, description="Transformer: attention heads per block")
    ff_units: int = Field(1024, ge=16, le=8192, description="Transformer: feed-forward size")
    dropout: float = Field(
        0.1, ge=0.0, le=0.9, allow_inf_nan=False, description="Transformer: dropout in training"
    )

    @model_validator(mode="after")
    def heads_divide(self) -> ModelAsked:
        """The Transformer splits its width between its heads."""
        if self.embedding_dim % self.heads:
            raise refused(
                "invalid_model",
                f"model.embedding_dim ({self.embedding_dim}) must be "
                f"divisible by model.heads ({self.heads})",
            )
        return self


class FeedbackUse(Strict):
    """Learn from the tenant's caption corrections too (POST /v1/jobs/{id}/feedback)."""

    weight: int = Field(
        1,
        ge=1,
        le=100,
        description="each correction counts as this many training captions of its image",
    )


class PromotionAsked(Strict):
    """Whether the version trained should serve: never, always, or if it beats the active one
    on a validation metric."""

    policy: Policy
    metric: Metric = Field(DEFAULT_METRIC, description="the validation metric compared (if_better)")


class RunCreate(Strict):
    """A training run: what to train on, how, from which version, and whether it may serve."""

    dataset: DatasetChoice = Field(
        description='a built-in synthetic set, {"type": "shapes", "size": N} or the harder '
        '{"type": "scenes", "size": N}, or an uploaded dataset, {"type": "upload", "id": '
        "DATASET_ID}",
        json_schema_extra=coded("invalid_dataset"),
    )
    hyperparameters: Hyperparameters = Field(
        Hyperparameters(),
        description="a JSON object of whole numbers (learning_rate: a number) within their "
        "limits; each left out takes its default",
        json_schema_extra=coded("invalid_hyperparameters"),
    )
    base_version: str | int | None = Field(
        None,
        description="a registered version to start from (v3); none: a fresh decoder",
        json_schema_extra=coded("invalid_base_version"),
    )
    promotion: Policy | PromotionAsked | None = Field(
        None,
        description="a policy (never, always, if_better), or {policy, metric} with metric "
        f"one of {', '.join(CAPTION_METRICS)} (default {DEFAULT_METRIC}). Only an admin key's "
        "run may promote: the default is if_better for an admin key, never for others",
        json_schema_extra=coded("invalid_promotion"),
    )
    webhook: WebUrl | None = Field(
        None,
        description="an http(s) URL told about the run; the SSRF guard refuses private addresses",
        json_schema_extra=coded("invalid_webhook"),
    )
    webhook_events: RunEvents = Field(
        ["completed"],
        description="events to tell the webhook: a list, or comma-separated",
        json_schema_extra=coded("invalid_webhook_events"),
    )
    feedback: FeedbackUse | None = Field(
        None,
        description="also train on the tenant's caption corrections made until now, each "
        "as `weight` captions of its image; 400 when there are none",
        json_schema_extra=coded("invalid_feedback"),
    )
    model: ModelAsked | None = Field(
        None,
        description="a fresh run's decoder architecture (default: a GRU of the default "
        "sizes); a fine-tune keeps its base version's, so a run with base_version may not send "
        "one",
        json_schema_extra=coded("invalid_model"),
    )

    @model_validator(mode="after")
    def consistent(self) -> RunCreate:
        """A fine-tune keeps its base's architecture; webhook events need a webhook."""
        if self.base_version is not None and self.model is not None:
            raise refused(
                "invalid_model",
                "a fine-tune keeps its base version's architecture: "
                "leave model out with a base_version",
            )
        if self.webhook is None and "webhook_events" in self.model_fields_set:
            raise refused("invalid_webhook", "webhook_events needs a webhook URL")
        return self


class RunFeedback(BaseModel):
    """The caption corrections a run learns from: how many, made until when, and their weight."""

    weight: int
    corrections: int
    until: str


class RunShapes(BaseModel):
    """The shapes set a run trains on."""

    type: Literal["shapes"]
    feedback: RunFeedback | None = None
    size: int
    seed: int


class RunScenes(BaseModel):
    """The scenes set a run trains on."""

    type: Literal["scenes"]
    feedback: RunFeedback | None = None
    size: int
    seed: int


class RunUpload(BaseModel):
    """The uploaded dataset a run trains on, named as it was when the run started."""

    type: Literal["upload"]
    id: str
    name: str
    feedback: RunFeedback | None = None


class RunHyperparameters(BaseModel):
    """The settings a run trains with, defaults filled in."""

    epochs: int
    batch_size: int
    learning_rate: float = Field(
        description="the one it trains with: its decoder's default if the run left it out"
    )
    vocab_size: int
    seed: int
    patience: int
    monitor: Metric = Field(description="the validation metric that picks the best epoch")


class RunModel(BaseModel):
    """The decoder architecture a fresh run trains, defaults filled in."""

    decoder: Decoder
    embedding_dim: int
    units: int
    attention_units: int
    layers: int
    heads: int
    ff_units: int
    dropout: float


class RunPromotion(BaseModel):
    """The promotion policy a run was started with."""

    policy: Policy
    metric: Metric


class Progress(BaseModel):
    """Where a running run is: making its dataset, computing image features, or training."""

    phase: Literal["dataset", "features", "training"]
    done: int | None = Field(None, description="dataset, features: items done so far")
    total: int | None = Field(None, description="dataset, features: items in all")
    split: str | None = Field(None, description="features: the split being encoded")
    epoch: int | None = Field(None, description="training: 1-based")
    epochs: int | None = None
    step: int | None = Field(None, description="training: 1-based, within the epoch")
    steps: int | None = None
    loss: float | None = Field(None, description="training: mean loss so far this epoch")
    images_per_s: float | None = None
    steps_per_s: float | None = None
    eta_s: float | None = Field(None, description="training: seconds left at the current pace")
    resumed_from_epoch: int | None = Field(
        None, description="training: the checkpoint's epoch it resumed from (null: a fresh start)"
    )


class Epoch(BaseModel):
    """One epoch: its mean training loss and token accuracy, then each validation caption
    metric (null where it has none)."""

    model_config = ConfigDict(extra="allow")
    epoch: int
    loss: float
    accuracy: float | None = Field(
        None,
        description="share of training words (not <pad>) the decoder ranked first; "
        "absent before it was recorded",
    )


class PromotionResult(BaseModel):
    """Whether the version a run produced was promoted, and why (not)."""

    promoted: bool
    reason: str
    metric: str | None
    candidate: float | None = Field(description="the new version's score on the metric")
    active: float | None = Field(description="the active version's score, where compared")
    calibration_error: float | None = Field(
        None,
        description="the new version's expected calibration error of its confidence, after "
        "calibration (null: none, or a run from before)",
    )
    ood_threshold: float | None = Field(
        None,
        description="the new version's out-of-distribution threshold (null: none, or a run "
        "from before)",
    )


class Checkpoint(BaseModel):
    """Where the run's checkpoint is kept (a run resumes from it)."""

    key: str = Field(description="its prefix in the blob store")


class RunLinks(BaseModel):
    """Links (paths, or absolute with PUBLIC_URL)."""

    self: str
    cancel: str
    deliveries: str
    curves: str = Field(
        description="loss, token accuracy and metrics per epoch (JSON); add .png for the chart"
    )


class TrainingRun(BaseModel):
    """A training run: request, status, progress, validation history and outcome."""

    id: str
    status: RunStatus
    dataset: RunShapes | RunScenes | RunUpload
    hyperparameters: RunHyperparameters
    model: RunModel | None = Field(
        description="the decoder architecture it trains (null: a "
        "fine-tune, which keeps its base version's, or a run from "
        "before architectures were chosen: a GRU)"
    )
    base_version: str | None = Field(description="the version it started from (null: fresh)")
    promotion: RunPromotion
    attempts: int = Field(description="workers that took it (a crashed worker's run is retried)")
    cancel_requested: bool
    progress: Progress | None
    history: list[Epoch] = Field(description="validation metrics per epoch")
    model_version: str | None = Field(description="the version it produced")
    promotion_result: PromotionResult | None
    checkpoint: Checkpoint | None
    error: Failure | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    webhook: WebhookTarget | None
    urls: RunLinks


class TrainingRunList(BaseModel):
    """The caller's newest runs first (up to 100)."""

    training_runs: list[TrainingRun]
