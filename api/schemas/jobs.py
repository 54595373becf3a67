"""Jobs and batches: what a submission may send, and what the API answers about them.

The request models are the one place a submission's fields are typed, bounded and given their
defaults: the views read the validated model, and /openapi.json documents the same models.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from api.schemas.base import (
    Query,
    Strict,
    TextFields,
    Upload,
    WebUrl,
    coded,
    event_names,
    refused,
)
from core.formats import OUT_OF_DISTRIBUTION
from core.options import (
    DEFAULT_BEAM_SIZE,
    DEFAULT_MAX_LENGTH,
    MAX_BEAM_SIZE,
    MAX_LENGTH,
    MAX_SEED,
    MAX_TEMPERATURE,
)
from store.jobs import DEFAULT_WEBHOOK_EVENTS, WEBHOOK_EVENTS
from store.tables import JobStatus

MAX_BATCH = 100  # images a batch
MAX_DEADLINE_S = 7 * 24 * 3600  # a week
OPTION = coded("invalid_option")
Events = event_names(WEBHOOK_EVENTS, DEFAULT_WEBHOOK_EVENTS)


class Submission(Strict):
    """What every submission may say besides its images: decoding options, the webhook to
    tell, and a deadline."""

    beam_size: int = Field(
        DEFAULT_BEAM_SIZE,
        ge=1,
        le=MAX_BEAM_SIZE,
        json_schema_extra=OPTION,
        description="beams searched (1: greedy); 1 when sampling",
    )
    max_length: int = Field(
        DEFAULT_MAX_LENGTH,
        ge=1,
        le=MAX_LENGTH,
        json_schema_extra=OPTION,
        description="most words in the caption",
    )
    temperature: float = Field(
        0.0,
        ge=0,
        le=MAX_TEMPERATURE,
        allow_inf_nan=False,
        description="0: the most likely words; above 0, each word is drawn from the model's "
        "distribution sharpened (below 1) or flattened (above 1)",
        json_schema_extra=OPTION,
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="the sampling noise's seed: the same seed, image and model give the same "
        "caption (a batch's i-th image takes seed + i; default: a random one when sampling, "
        "recorded)",
        json_schema_extra=OPTION,
    )
    webhook: WebUrl | None = Field(
        None,
        description="an http(s) URL told when the job (or batch) ends; the SSRF guard refuses "
        "private addresses",
        json_schema_extra=coded("invalid_webhook"),
    )
    webhook_events: Events = Field(
        list(DEFAULT_WEBHOOK_EVENTS),
        description="events to tell the webhook: a list, or comma-separated",
        json_schema_extra=coded("invalid_webhook_events"),
    )
    deadline_s: float | None = Field(
        None,
        gt=0,
        le=MAX_DEADLINE_S,
        allow_inf_nan=False,
        description="seconds (at most 7 days) the job may wait before it starts; later it is "
        "aborted. The Cancel-After header does the same (this field wins).",
        json_schema_extra=coded("invalid_deadline"),
    )

    @model_validator(mode="after")
    def consistent(self) -> Submission:
        """Sampling takes one beam; webhook events need a webhook."""
        if self.temperature and self.beam_size > 1:
            raise refused(
                "invalid_option",
                "a temperature above 0 samples one caption: leave beam_size out or set it to 1",
            )
        if self.webhook is None and "webhook_events" in self.model_fields_set:
            raise refused("invalid_webhook", "webhook_events needs a webhook URL")
        return self


def one_image(image: bool, url: bool, hint: str) -> None:
    """A 400 unless a job sends its image or its URL, not both."""
    if image and url:
        raise refused("invalid_image_url", "send the image or its URL, not both")
    if not image and not url:
        raise refused("missing_image", hint)


def batch_images(count: int, urls: int) -> None:
    """A 400 unless a batch sends 1 to MAX_BATCH images or URLs, not both."""
    if count and urls:
        raise refused("invalid_image_url", "send images or their URLs, not both")
    if not count + urls:
        raise refused(
            "empty_batch",
            "a batch needs at least one image under 'images' (or URL under 'image_urls')",
        )
    if count + urls > MAX_BATCH:
        raise refused(
            "batch_too_large", f"{count + urls} images; a batch holds at most {MAX_BATCH}"
        )


IMAGE_URL = "an http(s) URL the worker fetches the image from"


class JobJson(Submission):
    """A job as JSON: the image as base64 (a data: URL is fine), or its URL."""

    image: str | None = Field(
        None,
        description="the image, base64 (or a data: URL)",
        json_schema_extra=coded("missing_image"),
    )
    image_url: WebUrl | None = Field(
        None, description=IMAGE_URL, json_schema_extra=coded("invalid_image_url")
    )

    @model_validator(mode="after")
    def an_image(self) -> JobJson:
        """The image or its URL."""
        one_image(
            bool(self.image),
            self.image_url is not None,
            "send the image as base64 'image', or its URL as 'image_url'",
        )
        return self


class JobForm(TextFields, Submission):
    """A job as multipart/form-data: the image file, or its URL."""

    image: Upload | None = Field(
        None, description="the image file", json_schema_extra=coded("missing_image")
    )
    image_url: WebUrl | None = Field(
        None, description=IMAGE_URL, json_schema_extra=coded("invalid_image_url")
    )

    @model_validator(mode="after")
    def an_image(self) -> JobForm:
        """The image or its URL."""
        one_image(
            self.image is not None,
            self.image_url is not None,
            "send the image as a multipart file named 'image', or its URL as 'image_url'",
        )
        return self


IMAGE_URLS = "http(s) URLs the workers fetch the images from"
UP_TO = {"maxItems": MAX_BATCH}


class BatchJson(Submission):
    """A batch as JSON: up to 100 base64 images, or their URLs."""

    images: list[str] | None = Field(
        None,
        description="base64 images (data: URLs are fine)",
        json_schema_extra=coded("invalid_images", "missing_image", **UP_TO),
    )
    image_urls: list[WebUrl] | None = Field(
        None, description=IMAGE_URLS, json_schema_extra=coded("invalid_image_url", **UP_TO)
    )

    @model_validator(mode="after")
    def some_images(self) -> BatchJson:
        """1 to MAX_BATCH images or URLs."""
        batch_images(len(self.images or ()), len(self.image_urls or ()))
        return self


class BatchForm(TextFields, Submission):
    """A batch as multipart/form-data: files named `images` (repeated), or `image_urls`."""

    images: list[Upload] | None = Field(
        None, description="image files", json_schema_extra=coded("missing_image", **UP_TO)
    )
    image_urls: list[WebUrl] | None = Field(
        None, description=IMAGE_URLS, json_schema_extra=coded("invalid_image_url", **UP_TO)
    )

    @model_validator(mode="after")
    def some_images(self) -> BatchForm:
        """1 to MAX_BATCH images or URLs."""
        batch_images(len(self.images or ()), len(self.image_urls or ()))
        return self


class JobListQuery(Query):
    """Which jobs to list."""

    status: JobStatus | None = Field(None, json_schema_extra=coded("invalid_status"))
    limit: int = Field(
        50, ge=1, le=100, description="jobs a page", json_schema_extra=coded("invalid_limit")
    )
    cursor: str | None = Field(
        None,
        description="next_cursor of the page before",
        json_schema_extra=coded("invalid_cursor"),
    )


class JobOptions(BaseModel):
    """How it is decoded."""

    beam_size: int
    max_length: int
    temperature: float = Field(description="0: greedy or beam search; above 0: sampled")
    seed: int | None = Field(description="the sampling seed (null: greedy with none named)")


class JobImage(BaseModel):
    """The image as checked at submit (a URL's is unknown, 0, until a worker fetches it)."""

    format: str
    width: int
    height: int
    bytes: int
    url: str | None = Field(None, description="where the worker fetches it (URL jobs only)")


class OodScore(BaseModel):
    """How unlike the model's training images the image is (out of distribution)."""

    score: float = Field(description="the image's distance from the training images' features")
    threshold: float = Field(
        description="the version's threshold: scores above it are flagged (set so that few "
        "validation images, its false-alarm rate, are)"
    )
    flagged: bool = Field(
        description="the score is above the threshold: the image is unlike the training "
        "images, and the caption is probably wrong"
    )


class JobResult(BaseModel):
    """The caption, word by word, with the log-probability of each word, and how far to trust
    it."""

    caption: str | None
    tokens: list[str] | None
    token_log_probs: list[float] | None
    model_version: str | None
    attention_shape: list[int] | None = Field(description="(words, 64): the attention's shape")
    confidence: float | None = Field(
        None,
        ge=0,
        le=1,
        description="the calibrated probability that the caption is right: on the synthetic "
        "sets (shapes, scenes), that it is exactly the true caption; for COCO-style data, that "
        "it matches a reference caption exactly, a conservative proxy for right (null: a "
        "model version without calibration)",
    )
    ood: OodScore | None = Field(
        None,
        description="the out-of-distribution score of the image (null: a model version "
        "without one)",
    )


class Failure(BaseModel):
    """Why a job or a run failed (or was aborted or canceled)."""

    code: str
    message: str | None


class JobTimings(BaseModel):
    """When it moved, and how long each part took."""

    created_at: str | None
    started_at: str | None
    finished_at: str | None
    queue_ms: float | None
    predict_ms: float | None
    total_ms: float | None
    batch_size: int | None = Field(description="jobs in its forward pass")


class WebhookTarget(BaseModel):
    """Where and on which events it is announced."""

    url: str
    events: list[str] | None


class JobLinks(BaseModel):
    """Links (paths, or absolute with PUBLIC_URL)."""

    self: str
    cancel: str
    deliveries: str
    batch: str | None = None
    attention: str | None = Field(None, description="once it succeeded")
    attention_png: str | None = Field(None, description="once it succeeded")


class Job(BaseModel):
    """One job: status, request, result or error, timings and links."""

    id: str
    status: JobStatus
    batch_id: str | None
    attempts: int
    enqueued: bool = Field(
        description="false while the job waits to be handed to the queue's broker, which was "
        "away when it was submitted: it is recorded, and sent once the broker is back"
    )
    options: JobOptions
    deadline_at: str | None
    image: JobImage
    result: JobResult | None
    warnings: list[str] = Field(
        description="what to know before trusting the caption ([] when nothing): "
        f"`{OUT_OF_DISTRIBUTION}`, the image is unlike the model's training images (`result.ood` "
        "is flagged) and the caption is probably wrong"
    )
    error: Failure | None
    timings: JobTimings
    webhook: WebhookTarget | None
    urls: JobLinks


class JobList(BaseModel):
    """A page of jobs, newest first."""

    jobs: list[Job]
    next_cursor: str | None


class BatchLinks(BaseModel):
    """Links (paths, or absolute with PUBLIC_URL)."""

    self: str
    deliveries: str


class Batch(BaseModel):
    """A batch: `running` until every job has ended, counts per status, and its jobs."""

    id: str
    size: int
    status: Literal["running", "completed"]
    counts: dict[str, int]
    created_at: str | None
    finished_at: str | None
    webhook: WebhookTarget | None
    jobs: list[Job]
    urls: BatchLinks
