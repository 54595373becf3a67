"""The model registry: versions (bundles in the blob store), the one active version, promotion.

Inference workers poll `active_version`; promoting flips the `active` flag in one transaction,
so exactly one version is active from the first promotion on (a partial unique index says so).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from store.blob_keys import bundle_prefix
from store.tables import ModelVersion, WorkerModel, utcnow

# A worker whose heartbeat is this many beats late is taken for gone (stopped or dead): it
# leaves /v1/workers and the `captioner_workers` gauge. Floor: MODEL_POLL_S set very short.
MISSED_BEATS = 3
MIN_LIVE_WINDOW_S = 5.0


@dataclass(frozen=True)
class NewVersion:
    """What a training run (or an import) knows about the bundle it registers."""

    digest: str  # sha256 of the decoder weights
    encoder_weights: str
    encoder_fingerprint: str
    metrics: dict[str, Any]
    parent: int | None = None
    training_run_id: uuid.UUID | None = None
    dataset: dict[str, Any] | None = None
    architecture: dict[str, Any] | None = None  # the bundle's model config (decoder, sizes)


def version_number(name: str) -> int | None:
    """3 for "v3" or "3"; None for anything else."""
    digits = name.removeprefix("v")  # ASCII digits only: int() would also take "١" or " 3"
    return int(digits) if re.fullmatch(r"[0-9]{1,9}", digits) else None


def register(session: Session, new: NewVersion) -> ModelVersion:
    """Insert a version (flushed, so its number is known; the caller uploads, then commits)."""
    version = ModelVersion(bundle_key="", active=False, **vars(new))
    session.add(version)
    session.flush()
    version.bundle_key = bundle_prefix(version.version)
    session.flush()
    return version


def get_version(session: Session, number: int) -> ModelVersion | None:
    """One version, or None."""
    return session.get(ModelVersion, number, populate_existing=True)


def version_of_run(session: Session, run_id: uuid.UUID) -> ModelVersion | None:
    """The version a training run registered, if it got that far."""
    query = select(ModelVersion).where(ModelVersion.training_run_id == run_id)
    return session.scalars(query).first()


def list_versions(session: Session) -> list[ModelVersion]:
    """Every version, newest first."""
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.number.desc())))


def active_version(session: Session) -> ModelVersion | None:
    """The version inference workers should serve, or None before the first promotion."""
    query = select(ModelVersion).where(ModelVersion.active.is_(True))
    return session.scalars(query, execution_options={"populate_existing": True}).first()


def promote(session: Session, number: int) -> ModelVersion | None:
    """Make `number` the active version (the previous one steps down); None if it is unknown."""
    if session.bind.dialect.name == "postgresql":
        # Two promotions at once would each see the old version active and both flip theirs on.
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext('model_versions.active'))"))
    target = get_version(session, number)
    if target is None:
        return None
    if not target.active:
        others = (ModelVersion.active.is_(True)) & (ModelVersion.number != number)
        session.execute(update(ModelVersion).where(others).values(active=False))
        session.flush()  # the index allows one active row at any moment
        target.active, target.promoted_at = True, utcnow()
        session.flush()
    return target


def report_worker(session: Session, worker: str, **state: Any) -> None:
    """Record a worker's heartbeat: its role and activity, or what an inference worker serves
    now (and what it refused, and why)."""
    row = session.get(WorkerModel, worker) or WorkerModel(worker=worker)
    for name, value in state.items():
        setattr(row, name, value)
    row.seen_at = utcnow()
    session.add(row)


def live_window_s(heartbeat_s: float) -> float:
    """How long after its last heartbeat a worker still counts as running: a few missed beats
    (every worker beats every MODEL_POLL_S), and never less than a short floor, so that a
    database slower for a moment does not hide a live worker."""
    return max(MISSED_BEATS * heartbeat_s, MIN_LIVE_WINDOW_S)


def serving_workers(session: Session, seen_within_s: float) -> list[WorkerModel]:
    """Workers of every role that reported within the last `seen_within_s` seconds, by name
    (`live_window_s`: those still running)."""
    recent = WorkerModel.seen_at >= utcnow() - timedelta(seconds=seen_within_s)
    return list(session.scalars(select(WorkerModel).where(recent).order_by(WorkerModel.worker)))
