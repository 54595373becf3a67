"""A training run's learning curves: one column per measure, one entry per epoch."""

from __future__ import annotations

from pydantic import BaseModel, Field

from api.schemas.training import Metric


class CurveLinks(BaseModel):
    """Links (paths, or absolute with PUBLIC_URL)."""

    self: str
    png: str = Field(description="the same curves drawn as a PNG")
    run: str = Field(description="the training run")


class Curves(BaseModel):
    """A run's history by column: each list has one entry per epoch, null where it has none."""

    run_id: str
    metric: Metric = Field(description="the run's validation metric (what picks its best epoch)")
    epochs: list[int] = Field(description="the epochs done, 1-based, in order")
    loss: list[float | None] = Field(description="each epoch's mean training loss")
    accuracy: list[float | None] = Field(
        description="each epoch's training token accuracy: the fraction of target tokens (not "
        "padding) predicted right; null for epochs trained before it was recorded"
    )
    metrics: dict[str, list[float | None]] = Field(
        description="each validation metric the history has (bleu1…bleu4, cider, exact_match, "
        "localization), by name"
    )
    urls: CurveLinks
