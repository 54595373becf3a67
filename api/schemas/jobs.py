"""Jobs and batches: what a submission may send, and what the API answers about them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field
from spectree.model_adapter.pydantic_adapter import BaseFile

from api.contract import Query, Strict, coded
from api.uploads import MAX_BATCH, MAX_URL_CHARS
from store.jobs import WEBHOOK_EVENTS
from store.tables import JobStatus

Event = Literal[WEBHOOK_EVENTS]  # type: ignore[valid-type]


def as_list(value: Any) -> Any:
    """A form field sent once is a single value; the model wants the list."""
    return value if isinstance(value, list) else [value]


Url = Annotated[str, Field(max_length=MAX_URL_CHARS)]
FormList = BeforeValidator(as_list)


class Options(Strict):
    """Decoding options and the webhook, shared by jobs and batches (JSON or form fields)."""

    beam_size: int = Field(
        3,
        ge=1,
        le=10,
        description="beams searched (1: greedy); 1 when temperature is above 0",
        json_schema_extra=coded("invalid_option"),
    )
    max_length: int = Field(
        20,
        ge=1,
        le=50,
        description="most words in the caption",
        json_schema_extra=coded("invalid_option"),
    )
    temperature: float = Field(
        0.0,
        ge=0,
        le=2,
        description="0: the most likely words; above 0, "
        "each word is drawn from the model's distribution sharpened "
        "(below 1) or flattened (above 1)",
        json_schema_extra=coded("invalid_option"),
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=2**32 - 1,
        description="the sampling noise's seed: "
        "the same seed, image and model give the same caption (a batch's "
        "i-th image takes seed + i; default: a random one, recorded)",
        json_schema_extra=coded("invalid_option"),
    )
    webhook: Url | None = Field(
        None,
        description="an http(s) URL told when the job (or batch) "
        "ends; the SSRF guard refuses private addresses",
        json_schema_extra=coded("invalid_webhook"),
    )
    webhook_events: list[Event] | str | None = Field(
        None,
        description="events to tell: a list, or comma-separated (default completed)",
        json_schema_extra=coded("invalid_webhook_events"),
    )
    deadline_s: float | str | None = Field(
        None,
        description="seconds (at most 7 days) the job may wait before it starts; later it "
        "is aborted. The Cancel-After header does the same.",
        json_schema_extra=coded("invalid_deadline"),
    )


class JobJson(Options):
    """A job as JSON: the image as base64 (a data: URL is fine), or its URL."""

    image: str | None = Field(
        None,
        description="the image, base64 (or a data: URL)",
        json_schema_extra=coded("missing_image"),
    )
    image_url: Url | None = Field(
        None,
        description="an http(s) URL the worker fetches the image from",
        json_schema_extra=coded("invalid_image_url"),
    )


class Form(Options):
    """Options as form fields: text, never null (an absent field takes its default)."""

    webhook: Url = Field(
        None,
        description="an http(s) URL told when the job (or batch) ends; "
        "the SSRF guard refuses private addresses",
        json_schema_extra=coded("invalid_webhook"),
    )
    webhook_events: Annotated[list[str], FormList] = Field(
        None,
        description="events to tell (repeat the field, or comma-separate)",
        json_schema_extra=coded("invalid_webhook_events"),
    )
    deadline_s: str = Field(
        None,
        description="seconds (at most 7 days) the job may wait before "
        "it starts; later it is aborted",
        json_schema_extra=coded("invalid_deadline"),
    )


class JobForm(Form):
    """A job as multipart/form-data: the image file, or its URL."""

    image: BaseFile = Field(None, description="the image file")
    image_url: Url = Field(
        None,
        description="an http(s) URL the worker fetches the image from",
        json_schema_extra=coded("invalid_image_url"),
    )


class BatchJson(Options):
    """A batch as JSON: up to 100 base64 images, or their URLs."""

    images: list[str] | None = Field(
        None,
        description="base64 images",
        json_schema_extra=coded("invalid_images", "missing_image", maxItems=MAX_BATCH),
    )
    image_urls: list[Url] | None = Field(
        None,
        description="http(s) URLs the workers fetch the images from",
        json_schema_extra=coded("invalid_image_url", maxItems=MAX_BATCH),
    )


class BatchForm(Form):
    """A batch as multipart/form-data: files named `images` (repeated), or `image_urls`."""

    images: Annotated[list[BaseFile], FormList] = Field(None, description="image files")
    image_urls: Annotated[list[Url], FormList] = Field(
        None,
        description="http(s) URLs the workers fetch the images from",
        json_schema_extra=coded("invalid_image_url"),
    )


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


class JobResult(BaseModel):
    """The caption, word by word, with the log-probability of each word."""

    caption: str | None
    tokens: list[str] | None
    token_log_probs: list[float] | None
    model_version: str | None
    attention_shape: list[int] | None = Field(description="(words, 64): the attention's shape")


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
    options: JobOptions
    deadline_at: str | None
    image: JobImage
    result: JobResult | None
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
