"""A job's attention weights."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.schemas.base import Query, coded


class AttentionQuery(Query):
    """Which form of the weights."""

    format: Literal["npy", "json"] = Field(
        "npy",
        description="npy: the stored (T, 64) float16 .npy file; json: T grids of 8×8",
        json_schema_extra=coded("invalid_format"),
    )


class Attention(BaseModel):
    """The attention of each word of the caption over the image's grid of cells."""

    job_id: str
    tokens: list[str] | None = Field(description="the caption's words, one grid each")
    shape: list[int] = Field(description="(words, rows, columns)")
    attention: list[list[list[float]]] = Field(description="a grid of weights per word")
