"""Typed answers: small frozen dataclasses built from the API's JSON, each keeping it as `.raw`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
OUT_OF_DISTRIBUTION = "out_of_distribution"  # a job's warning: the image is unlike the training's
Raw = dict[str, Any]


def _raw() -> Any:
    return field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Ood:
    """How unlike the model's training images an image is: flagged above the threshold."""

    score: float
    threshold: float
    flagged: bool

    @classmethod
    def from_json(cls, raw: Raw | None) -> Ood | None:
        """From a result's `ood` object (None: the version has no OOD score)."""
        return cls(raw["score"], raw["threshold"], raw["flagged"]) if raw else None


@dataclass(frozen=True)
class Caption:
    """A succeeded job's result: the caption, its words, the version that wrote it, and how far
    to trust it (None where the version does not say)."""

    caption: str
    words: tuple[str, ...]
    log_probs: tuple[float, ...]
    model_version: str | None
    confidence: float | None = None  # calibrated probability that the caption is right
    ood: Ood | None = None
    raw: Raw = _raw()

    @classmethod
    def from_json(cls, raw: Raw) -> Caption:
        """From a job's `result` object."""
        return cls(
            raw.get("caption") or "",
            tuple(raw.get("tokens") or ()),
            tuple(raw.get("token_log_probs") or ()),
            raw.get("model_version"),
            raw.get("confidence"),
            Ood.from_json(raw.get("ood")),
            raw,
        )


@dataclass(frozen=True)
class Job:
    """One job: its status, and its caption once it succeeded or its error once it failed."""

    id: str
    status: str
    caption: Caption | None
    error_code: str | None
    error_message: str | None
    batch_id: str | None
    warnings: tuple[str, ...] = ()  # "out_of_distribution": the caption is probably wrong
    raw: Raw = _raw()

    @property
    def done(self) -> bool:
        """Whether the status is terminal (succeeded, failed, canceled, aborted)."""
        return self.status in TERMINAL

    @property
    def out_of_distribution(self) -> bool:
        """Whether the image is unlike the model's training images (the caption is probably
        wrong)."""
        return OUT_OF_DISTRIBUTION in self.warnings

    @classmethod
    def from_json(cls, raw: Raw) -> Job:
        """From GET /v1/jobs/{id}'s answer."""
        error = raw.get("error") or {}
        result = raw.get("result")
        return cls(
            raw["id"],
            raw["status"],
            Caption.from_json(result) if result else None,
            error.get("code"),
            error.get("message"),
            raw.get("batch_id"),
            tuple(raw.get("warnings") or ()),
            raw,
        )


@dataclass(frozen=True)
class Batch:
    """A batch: `running` until every job has ended, counts per status, and its jobs."""

    id: str
    status: str
    size: int
    counts: dict[str, int]
    jobs: tuple[Job, ...]
    raw: Raw = _raw()

    @property
    def done(self) -> bool:
        """Whether every job of it has ended."""
        return self.status == "completed"

    @classmethod
    def from_json(cls, raw: Raw) -> Batch:
        """From GET /v1/batches/{id}'s answer."""
        jobs = tuple(Job.from_json(job) for job in raw.get("jobs", ()))
        return cls(raw["id"], raw["status"], raw["size"], dict(raw.get("counts", {})), jobs, raw)


@dataclass(frozen=True)
class TrainingRun:
    """A training run: status, progress, validation history and the version it produced."""

    id: str
    status: str
    progress: Raw | None
    history: tuple[Raw, ...]
    model_version: str | None
    error_code: str | None
    raw: Raw = _raw()

    @property
    def done(self) -> bool:
        """Whether the status is terminal."""
        return self.status in TERMINAL

    @classmethod
    def from_json(cls, raw: Raw) -> TrainingRun:
        """From GET /v1/training-runs/{id}'s answer."""
        error = raw.get("error") or {}
        return cls(
            raw["id"],
            raw["status"],
            raw.get("progress"),
            tuple(raw.get("history") or ()),
            raw.get("model_version"),
            error.get("code"),
            raw,
        )


@dataclass(frozen=True)
class Dataset:
    """An uploaded dataset: its name, format and captioned images."""

    id: str
    name: str
    format: str
    images: int
    captions: int
    raw: Raw = _raw()

    @classmethod
    def from_json(cls, raw: Raw) -> Dataset:
        """From GET /v1/datasets/{id}'s answer."""
        return cls(raw["id"], raw["name"], raw["format"], raw["images"], raw["captions"], raw)


@dataclass(frozen=True)
class ModelVersion:
    """A registered model version: whether it serves, its lineage and validation metrics."""

    version: str
    active: bool
    parent: str | None
    metrics: dict[str, float | None]
    created_at: str
    raw: Raw = _raw()

    @property
    def decoder(self) -> str:
        """Its decoder architecture ("gru", "transformer"), or "?" where the API does not say."""
        return (self.raw.get("architecture") or {}).get("decoder", "?")

    @property
    def calibration_error(self) -> float | None:
        """Its confidence's expected calibration error after calibration (None: not known)."""
        return self.raw.get("calibration_error")

    @property
    def ood_threshold(self) -> float | None:
        """The OOD score above which its jobs are flagged (None: not known)."""
        return self.raw.get("ood_threshold")

    @classmethod
    def from_json(cls, raw: Raw) -> ModelVersion:
        """From GET /v1/models/{version}'s answer."""
        return cls(
            raw["version"],
            raw["active"],
            raw.get("parent"),
            dict(raw.get("metrics") or {}),
            raw.get("created_at", ""),
            raw,
        )


@dataclass(frozen=True)
class Correction:
    """A caption correction (POST /v1/jobs/{id}/feedback): what the model said, and what the
    image should have been captioned."""

    id: str
    job_id: str
    caption: str
    model_caption: str | None
    model_version: str | None
    raw: Raw = _raw()

    @classmethod
    def from_json(cls, raw: Raw) -> Correction:
        """From the feedback route's answer."""
        return cls(
            raw["id"],
            raw["job_id"],
            raw["caption"],
            raw.get("model_caption"),
            raw.get("model_version"),
            raw,
        )
