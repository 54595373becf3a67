"""Datasets: how an archive is uploaded, and what the API answers about one."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.schemas.base import Query, TextFields, Upload, coded

MAX_NAME = 200


class DatasetUploadQuery(Query):
    """The dataset's name, for an archive sent as the raw body."""

    name: str = Field(
        "dataset",
        min_length=1,
        max_length=MAX_NAME,
        description="the dataset's name when the archive is the raw body",
        json_schema_extra=coded("invalid_name"),
    )


class DatasetForm(TextFields):
    """An archive as multipart/form-data: the file, and its name."""

    archive: Upload = Field(
        description="the zip or tar (gzip too) archive, COCO format",
        json_schema_extra=coded("missing_archive"),
    )
    name: str | None = Field(
        None,
        max_length=MAX_NAME,
        description="the dataset's name (default: the file's name, cut to 200 characters)",
        json_schema_extra=coded("invalid_name"),
    )


class SplitCount(BaseModel):
    """What one split holds."""

    images: int = Field(description="captioned images")
    captions: int


class DatasetLinks(BaseModel):
    """Links (paths, or absolute with PUBLIC_URL)."""

    self: str


class Dataset(BaseModel):
    """An uploaded dataset: its archive, and its images and captions per split."""

    id: str
    name: str
    format: Literal["zip", "tar"] = Field(description="the archive's format")
    bytes: int = Field(description="the archive's size")
    unpacked_bytes: int = Field(description="its members' sizes added up")
    images: int = Field(description="captioned images, all splits")
    captions: int
    splits: dict[str, SplitCount] = Field(description="by role: train, val (and test)")
    created_at: str
    urls: DatasetLinks


class DatasetList(BaseModel):
    """The caller's datasets, newest first."""

    datasets: list[Dataset]
