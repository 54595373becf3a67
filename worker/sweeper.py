"""The sweeper: jobs and training runs whose worker died, or whose message never reached the
queue, are sent again; after the broker lost its data (a marker key is gone), every queued job
is sent again at the next sweep. It also aborts queued jobs past their deadline (no worker
claimed them in time), forgets idempotency keys past their 24 hours and, when `retention_days`
is set, purges jobs that ended long ago."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from core.broker import Broker
from core.notify import Notifier
from core.settings import Settings
from store import idempotency, jobs, retention, training
from store.blobs import BlobStore, open_blob_store
from store.db import Database
from store.tables import utcnow

log = logging.getLogger(__name__)
UNSENT_AFTER = timedelta(seconds=30)  # the API marks a run sent right after committing it
# A job's row is marked sent in its insert's transaction, and unmarked if the broker refused its
# message: a job with no mark is sent again at the next sweep.
UNSENT_JOB_AFTER = timedelta(0)
RESEND_LEASES = 4  # a queued job unclaimed for this many leases may have lost its message
# ... or for one lease when no message waits in the queue: then nothing will claim it but a
# worker that holds its message, and a worker that died holding it never will.
IDLE_RESEND_LEASES = 1
PURGE_PAGES = 20  # pages of `retention.PURGE_PAGE` jobs per sweep at most; the next goes on


def sweep(settings: Settings, db: Database, broker: Broker) -> int:
    """Abort late jobs, requeue expired leases, resend unsent or long-unclaimed jobs and runs,
    purge old idempotency keys and jobs, delete stray blobs; how many jobs and runs were sent."""
    abort_late_jobs(settings, db)
    sent = resend(settings, db, broker)
    purge_idempotency_keys(db)
    blobs = open_blob_store(settings)
    if settings.retention_days:
        purge_old_jobs(settings, db, blobs)
    delete_stray_blobs(db, blobs)
    return sent


def resend(settings: Settings, db: Database, broker: Broker) -> int:
    """Requeue expired leases, resend unsent or long-unclaimed jobs and runs; how many were sent."""
    leases = IDLE_RESEND_LEASES if no_message_waits(broker) else RESEND_LEASES
    resend_after = timedelta(seconds=settings.job_lease_seconds * leases)
    lost = broker.lost_messages()
    if lost:
        log.warning("the broker holds none of its earlier messages: every queued job is resent")
    with db.session() as session:
        job_ids = jobs.jobs_to_resend(session, UNSENT_JOB_AFTER, resend_after, all_queued=lost)
        run_ids = training.runs_to_resend(session, UNSENT_AFTER, all_queued=lost)
    sent_jobs = broker.jobs(job_ids, per_message=settings.batch_max_size)
    sent_runs = broker.runs(run_ids)
    with db.session() as session:
        jobs.mark_enqueued(session, sent_jobs)
        training.mark_enqueued(session, sent_runs)
    if sent_jobs or sent_runs:
        log.info("sweeper resent %d jobs and %d training runs", len(sent_jobs), len(sent_runs))
    return len(sent_jobs) + len(sent_runs)


def no_message_waits(broker: Broker) -> bool:
    """Whether the inference queue is empty in Redis (False when that cannot be known: the
    embedded broker, or Redis away). Any waiting message claims whichever jobs are next, so
    queued jobs are only at risk when none waits."""
    try:
        return broker.queue_lengths().get("inference") == 0
    except Exception:  # noqa: BLE001 - Redis away: the usual rule applies
        return False


def abort_late_jobs(settings: Settings, db: Database) -> list[uuid.UUID]:
    """Abort the queued jobs past their deadline, so none waits on when no worker claims it;
    their webhooks go out as for any terminal change, and waiting requests hear of it."""
    with db.session() as session:  # the deliveries it records are sent once it commits
        aborted = jobs.abort_late_jobs(session)
    if aborted:
        Notifier(settings.broker_url).finished_many(aborted)
        log.info("sweeper aborted %d jobs past their deadline", len(aborted))
    return aborted


def delete_stray_blobs(db: Database, blobs: BlobStore) -> int:
    """Delete the blobs refused submissions and deletes left while the store was away; how
    many."""
    deleted = retention.delete_strays(db, blobs)
    if deleted:
        log.info("sweeper deleted %d stray blobs", deleted)
    return deleted


def purge_idempotency_keys(db: Database) -> int:
    """Forget the idempotency keys first used over 24 hours ago; how many."""
    with db.session() as session:
        purged = idempotency.purge_expired(session, idempotency.KEEP_FOR)
    if purged:
        log.info("sweeper forgot %d idempotency keys", purged)
    return purged


def purge_old_jobs(settings: Settings, db: Database, blobs: BlobStore) -> int:
    """Delete jobs that ended over `retention_days` ago with their blobs, deliveries and emptied
    batches, a page per transaction; how many."""
    ended_before = utcnow() - timedelta(days=settings.retention_days)
    purged = 0
    for _ in range(PURGE_PAGES):
        with db.session() as session:
            removal = retention.purge_ended_jobs(session, ended_before)
        retention.delete_blobs(blobs, removal.blob_keys, db)  # after the commit: store.retention
        purged += len(removal.deleted)
        if len(removal.deleted) < retention.PURGE_PAGE:
            break
    if purged:
        log.info(
            "sweeper purged %d jobs that ended before %s (retention %g days)",
            purged,
            ended_before.isoformat(timespec="seconds"),
            settings.retention_days,
        )
    return purged
