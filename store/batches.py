"""Batch records: a batch and all its jobs are inserted together, in submission order."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.jobs import NewJob
from store.models import Batch, Job, JobStatus, utcnow


def create_batch(session: Session, owner: str, new_jobs: Sequence[NewJob]) -> Batch:
    """Insert a batch and its queued jobs (flushed, not committed: the caller's session commits)."""
    if any(new.owner != owner for new in new_jobs):
        raise ValueError(f"every job of a batch must belong to its owner {owner!r}")
    now = utcnow()
    batch = Batch(id=uuid.uuid4(), owner=owner, size=len(new_jobs), created_at=now)
    session.add(batch)
    session.flush()  # the jobs' foreign key needs the batch row first
    for index, new in enumerate(new_jobs):
        # One microsecond apart, so ordering by created_at gives back the submission order.
        created = now + timedelta(microseconds=index)
        fields = asdict(new) | {"batch_id": batch.id, "created_at": created}
        session.add(Job(**fields, status=JobStatus.QUEUED.value, attempts=0))
    session.flush()
    return batch


def get_batch(session: Session, batch_id: uuid.UUID, owner: str | None = None) -> Batch | None:
    """The batch, or None (also when it belongs to another owner)."""
    batch = session.get(Batch, batch_id)
    return batch if batch is not None and owner in (None, batch.owner) else None


def batch_jobs(session: Session, batch_id: uuid.UUID) -> list[Job]:
    """The batch's jobs in submission order."""
    query = select(Job).where(Job.batch_id == batch_id).order_by(Job.created_at, Job.id)
    return list(session.scalars(query))
