"""Caption corrections: recorded with a copy of the job's image (the job may be deleted or
purged later; the correction stays until it is deleted itself), listed per tenant, and read
back by training runs as extra training examples."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from store.blob_keys import feedback_image_key
from store.blobs import BlobStore
from store.images import read_images
from store.tables import Feedback, Job, utcnow


def record_feedback(session: Session, blobs: BlobStore, job: Job, caption: str) -> Feedback | None:
    """Keep `caption` as the right one for the job's image; None when the image is gone."""
    image = read_images(blobs, [job])[job.id]
    if image is None:
        return None
    feedback_id = uuid.uuid4()
    key = feedback_image_key(feedback_id)
    blobs.put(key, image, "application/octet-stream")
    row = Feedback(
        id=feedback_id,
        owner=job.owner,
        job_id=job.id,
        image_key=key,
        caption=caption,
        model_caption=job.caption,
        model_version=job.model_version,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def list_feedback(
    session: Session, owner: str, before: datetime | None = None, limit: int | None = None
) -> Sequence[Feedback]:
    """The tenant's corrections, newest first (those made before `before`, if given)."""
    query = select(Feedback).where(Feedback.owner == owner)
    if before is not None:
        query = query.where(Feedback.created_at <= before)
    query = query.order_by(Feedback.created_at.desc(), Feedback.id.desc()).limit(limit)
    return list(session.scalars(query))


def count_feedback(session: Session, owner: str, before: datetime) -> int:
    """How many corrections the tenant made until `before`."""
    mine = (Feedback.owner == owner) & (Feedback.created_at <= before)
    return session.scalar(select(func.count()).select_from(Feedback).where(mine)) or 0


def get_feedback(session: Session, feedback_id: uuid.UUID, owner: str) -> Feedback | None:
    """One of the tenant's corrections, or None."""
    row = session.get(Feedback, feedback_id)
    return row if row is not None and row.owner == owner else None


def delete_feedback(session: Session, row: Feedback) -> str:
    """Forget a correction; the key of its image, to delete once this commits."""
    session.delete(row)
    session.flush()
    return row.image_key
