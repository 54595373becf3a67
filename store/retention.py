"""Deleting jobs, batches and datasets, and purging jobs that ended long ago.

The functions delete rows in the caller's transaction and return the blob keys that go with
them; the caller deletes those blobs (`delete_blobs`) only after the transaction commits. A blob
left behind (the process died in between, or the store failed) costs only storage; a blob
deleted under a row that then stays (the transaction rolled back) would leave a job whose image
or attention is gone.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, exists, select, update
from sqlalchemy.orm import Session

from core.errors import BlobStoreError
from store.blob_keys import attention_png_key
from store.blobs import BlobStore
from store.db import Database
from store.tables import (
    TERMINAL,
    Batch,
    Dataset,
    Delivery,
    DeliveryAttempt,
    Job,
    JobStatus,
    RunStatus,
    StrayBlob,
    TrainingRun,
    utcnow,
)

log = logging.getLogger(__name__)
PURGE_PAGE = 500  # jobs per transaction when purging: no sweep holds a huge one
NO_SYNC = {"synchronize_session": False}
_JOB_COLUMNS = (Job.id, Job.status, Job.batch_id, Job.image_key, Job.attention_key)


@dataclass(frozen=True)
class Removal:
    """What a delete removed, the blobs to delete once it commits, and what blocked it."""

    deleted: list[uuid.UUID] = field(default_factory=list)  # jobs, or the dataset
    batches: list[uuid.UUID] = field(default_factory=list)  # batches left with no jobs
    blob_keys: list[str] = field(default_factory=list)
    blocked_by: list[uuid.UUID] = field(default_factory=list)  # running jobs, active runs


def delete_jobs(
    session: Session, job_ids: Sequence[uuid.UUID], batch_ids: Sequence[uuid.UUID] = ()
) -> Removal:
    """Delete queued and ended jobs with their deliveries, and the batches (among theirs and
    `batch_ids`) they leave empty; nothing at all when one of them is running.

    A queued job goes as if canceled first: its row is locked, so no worker claims it meanwhile
    (a claim waits for the commit, then finds no row). Nothing is announced: the deliveries go too.
    """
    query = select(*_JOB_COLUMNS).where(Job.id.in_(job_ids)).order_by(Job.id).with_for_update()
    rows = list(session.execute(query))
    running = [row.id for row in rows if row.status == JobStatus.RUNNING.value]
    if running:
        return Removal(blocked_by=running)
    ids = [row.id for row in rows]
    batch_ids = sorted({row.batch_id for row in rows if row.batch_id} | set(batch_ids))
    if not ids and not batch_ids:
        return Removal()
    # Locked after the jobs, as finishing does: two deletes in one batch take turns, so the
    # second sees the first one's jobs gone when it counts who still uses a pack.
    session.execute(select(Batch.id).where(Batch.id.in_(batch_ids)).with_for_update())
    _delete_deliveries(session, ids)
    session.execute(delete(Job).where(Job.id.in_(ids)), execution_options=NO_SYNC)
    emptied = _delete_empty_batches(session, batch_ids)
    return Removal(ids, emptied, _blob_keys(session, rows))


def delete_batch(session: Session, batch_id: uuid.UUID) -> Removal:
    """Delete a batch and all its jobs (see `delete_jobs`); nothing when one is running."""
    job_ids = list(session.scalars(select(Job.id).where(Job.batch_id == batch_id)))
    return delete_jobs(session, job_ids, [batch_id])


def purge_ended_jobs(session: Session, ended_before: datetime, limit: int = PURGE_PAGE) -> Removal:
    """Delete up to `limit` jobs that ended before `ended_before`, oldest first (a page)."""
    old = Job.status.in_(TERMINAL) & (Job.finished_at < ended_before)
    query = select(Job.id).where(old).order_by(Job.finished_at).limit(limit)
    return delete_jobs(session, list(session.scalars(query)))


def delete_dataset(session: Session, dataset_id: uuid.UUID) -> Removal:
    """Delete a dataset unless a queued or running training run uses it; ended runs keep their
    `dataset` description and lose only the link to the row."""
    dataset = session.execute(
        select(Dataset.id, Dataset.archive_key).where(Dataset.id == dataset_id).with_for_update()
    ).first()  # locked: a run being created on it now commits first, then is seen below
    if dataset is None:
        return Removal()
    users = TrainingRun.dataset_id == dataset_id
    active = users & TrainingRun.status.in_([RunStatus.QUEUED.value, RunStatus.RUNNING.value])
    blocked = list(session.scalars(select(TrainingRun.id).where(active)))
    if blocked:
        return Removal(blocked_by=blocked)
    session.execute(
        update(TrainingRun).where(users).values(dataset_id=None), execution_options=NO_SYNC
    )
    session.execute(delete(Dataset).where(Dataset.id == dataset_id), execution_options=NO_SYNC)
    return Removal([dataset_id], blob_keys=[dataset.archive_key])


def delete_blobs(blobs: BlobStore, keys: Sequence[str], db: Database | None = None) -> int:
    """Delete blobs no row needs (a committed removal's, a refused submission's); one that
    fails is logged and, with `db`, noted for the sweeper (`delete_strays`). How many went."""
    deleted, left = 0, []
    for key in keys:
        try:
            blobs.delete(key)
            deleted += 1
        except (BlobStoreError, OSError) as exc:
            log.warning("blob %s left behind: %s", key, exc)
            left.append(key)
    if left and db is not None:
        note_strays(db, left)
    return deleted


def note_strays(db: Database, keys: Sequence[str]) -> None:
    """Record blobs to delete later; if that fails too (the database away), they are only
    logged."""
    try:
        with db.session() as session:
            for key in keys:
                session.merge(StrayBlob(key=key, noted_at=utcnow()))
    except Exception as exc:  # noqa: BLE001 - best effort: the error being handled matters more
        log.warning("blobs %s left behind for good (not noted: %s)", keys, exc)


def delete_strays(db: Database, blobs: BlobStore, limit: int = 500) -> int:
    """Delete the noted stray blobs, but any a job's row still names (a commit that was made
    though its answer was lost); stops at the first the store refuses. How many went."""
    with db.session() as session:
        oldest = select(StrayBlob.key).order_by(StrayBlob.noted_at).limit(limit)
        keys = list(session.scalars(oldest))
        if not keys:
            return 0
        named = set(session.scalars(select(Job.image_key).where(Job.image_key.in_(keys))))
    settled, deleted = [], 0
    for key in keys:
        if key not in named:
            try:
                blobs.delete(key)
            except (BlobStoreError, OSError):
                break  # still away: the next sweep tries again
            deleted += 1
        settled.append(key)
    if settled:
        with db.session() as session:
            session.execute(delete(StrayBlob).where(StrayBlob.key.in_(settled)))
    return deleted


def _delete_deliveries(session: Session, resource_ids: Sequence[uuid.UUID]) -> None:
    """Delete the webhook deliveries of jobs or batches, with their attempts."""
    if not resource_ids:
        return
    theirs = select(Delivery.id).where(Delivery.resource_id.in_(resource_ids))
    session.execute(
        delete(DeliveryAttempt).where(DeliveryAttempt.delivery_id.in_(theirs)),
        execution_options=NO_SYNC,
    )
    session.execute(
        delete(Delivery).where(Delivery.resource_id.in_(resource_ids)), execution_options=NO_SYNC
    )


def _delete_empty_batches(session: Session, batch_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Delete those of the batches that have no jobs left, with their deliveries; their ids."""
    if not batch_ids:
        return []
    empty = Batch.id.in_(batch_ids) & ~exists().where(Job.batch_id == Batch.id)
    emptied = list(session.scalars(select(Batch.id).where(empty)))
    _delete_deliveries(session, emptied)
    session.execute(delete(Batch).where(Batch.id.in_(emptied)), execution_options=NO_SYNC)
    return emptied


def _blob_keys(session: Session, rows: Sequence) -> list[str]:
    """The blobs of deleted jobs: images no remaining job uses (a batch's pack is shared),
    attention weights kept as blobs (jobs before migration 0005) and cached attention pictures."""
    images = {row.image_key for row in rows if row.image_key}  # empty: kept in the row
    used = set(session.scalars(select(Job.image_key).where(Job.image_key.in_(images)).distinct()))
    keys = sorted(images - used)
    keys += [row.attention_key for row in rows if row.attention_key]
    keys += [attention_png_key(row.id) for row in rows if row.status == JobStatus.SUCCEEDED.value]
    return keys
