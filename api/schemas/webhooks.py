"""Webhooks: the signing secret, its rotation, and the delivery log."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.schemas.base import Strict, coded
from store.tables import DeliveryStatus

MAX_GRACE_S = 7 * 86400


class RotateSecret(Strict):
    """How long the secret being replaced keeps signing (the body is optional)."""

    grace_seconds: float | None = Field(
        None,
        ge=0,
        le=MAX_GRACE_S,
        allow_inf_nan=False,
        description=f"seconds, 0 to {MAX_GRACE_S}, the old secret stays valid (default: the "
        "WEBHOOK_SECRET_GRACE_S setting)",
        json_schema_extra=coded("invalid_grace"),
    )


class PreviousSecret(BaseModel):
    """A rotated-out secret, still valid until it expires."""

    secret: str
    expires_at: str = Field(description="after this, it no longer signs or verifies")


class WebhookSecret(BaseModel):
    """The secret webhooks are signed with, and rotated-out ones still valid."""

    secret: str = Field(description="whsec_ and base64: the Standard Webhooks signing secret")
    created_at: str
    previous: list[PreviousSecret] = Field(description="older secrets still valid, with expiry")


class DeliveryResource(BaseModel):
    """What a delivery announces."""

    type: Literal["job", "batch", "training_run"]
    id: str


class DeliveryAttempt(BaseModel):
    """One POST of a delivery: when, what came back, how long it took."""

    number: int = Field(description="1 for the first attempt")
    started_at: str
    status_code: int | None = Field(description="the endpoint's status (null: no answer)")
    latency_ms: float
    error: str | None = Field(description="why it failed (null: delivered)")
    response: str | None = Field(description="the start of the endpoint's answer")


class DeliveryLinks(BaseModel):
    """Links (paths, or absolute with PUBLIC_URL)."""

    self: str
    replay: str


class Delivery(BaseModel):
    """A webhook delivery: what was announced where, its state, and every attempt."""

    id: str
    webhook_id: str = Field(description="the webhook-id header: the same on every attempt")
    event: str = Field(description="job.completed, batch.completed, training_run.progress, …")
    resource: DeliveryResource
    url: str
    status: DeliveryStatus
    attempt_count: int = Field(description="every attempt, replays included")
    next_attempt_at: str | None = Field(description="when it is tried next (pending only)")
    created_at: str
    finished_at: str | None = Field(description="when it was delivered or given up")
    attempts: list[DeliveryAttempt]
    urls: DeliveryLinks


class DeliveryList(BaseModel):
    """A resource's deliveries, oldest first."""

    deliveries: list[Delivery]
