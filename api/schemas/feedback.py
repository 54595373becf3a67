"""Caption corrections: what a user sends about a job's caption, and what the API keeps."""

from __future__ import annotations

from pydantic import BaseModel, Field

from api.schemas.base import Query, Strict, coded

MAX_CAPTION = 300


class FeedbackCreate(Strict):
    """The caption the image should have had."""

    caption: str = Field(
        min_length=1,
        max_length=MAX_CAPTION,
        pattern=r"[A-Za-z]",
        description=f"the right caption: words, at most {MAX_CAPTION} characters",
        json_schema_extra=coded("invalid_caption"),
    )


class FeedbackListQuery(Query):
    """How many corrections to list."""

    limit: int = Field(
        50,
        ge=1,
        le=500,
        description="corrections to list, newest first",
        json_schema_extra=coded("invalid_limit"),
    )


class FeedbackLinks(BaseModel):
    """Links (paths, or absolute with PUBLIC_URL)."""

    self: str
    job: str


class Feedback(BaseModel):
    """One correction: its job, what the model said, and what it should have said."""

    id: str
    job_id: str
    caption: str
    model_caption: str | None
    model_version: str | None
    created_at: str
    urls: FeedbackLinks


class FeedbackList(BaseModel):
    """The tenant's corrections, newest first."""

    feedback: list[Feedback]
