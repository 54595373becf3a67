"""Batch records: a batch and all its jobs are inserted together, in submission order.

`store.jobs.batch_jobs` lists them back.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy.orm import Session

from store.jobs import NewJob, values
from store.tables import Batch, Job, JobStatus, utcnow


def create_batch(
    session: Session,
    owner: str,
    new_jobs: Sequence[NewJob],
    webhook_url: str | None = None,
    webhook_events: Sequence[str] | None = None,
) -> tuple[Batch, list[Job]]:
    """Insert a batch and its queued jobs (flushed, not committed: the caller's session commits);
    the rows, in submission order.

    The batch's webhook is told about the batch as a whole, not about each job.
    """
    if any(new.owner != owner for new in new_jobs):
        raise ValueError(f"every job of a batch must belong to its owner {owner!r}")
    now = utcnow()
    batch = Batch(
        id=uuid.uuid4(),
        owner=owner,
        size=len(new_jobs),
        created_at=now,
        webhook_url=webhook_url,
        webhook_events=list(webhook_events) if webhook_url else None,
    )
    session.add(batch)
    session.flush()  # the jobs' foreign key needs the batch row first
    jobs = []
    for index, new in enumerate(new_jobs):
        # One microsecond apart, so ordering by created_at gives back the submission order.
        created = now + timedelta(microseconds=index)
        fields = values(new) | {"batch_id": batch.id, "created_at": created}
        jobs.append(Job(**fields, status=JobStatus.QUEUED.value, attempts=0))
    session.add_all(jobs)
    session.flush()
    return batch, jobs


def get_batch(session: Session, batch_id: uuid.UUID, owner: str | None = None) -> Batch | None:
    """The batch, or None (also when it belongs to another owner)."""
    batch = session.get(Batch, batch_id)
    return batch if batch is not None and owner in (None, batch.owner) else None
