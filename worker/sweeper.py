"""The sweeper: jobs and training runs whose worker died, or whose message never reached the
queue, are sent again."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import Celery

from captioner.broker import enqueue_jobs, enqueue_runs
from captioner.settings import Settings
from store import jobs, training
from store.db import Database

log = logging.getLogger(__name__)
UNSENT_AFTER = timedelta(seconds=30)  # the API marks a job sent right after committing it
RESEND_LEASES = 4  # a queued job unclaimed for this many leases may have lost its message


def sweep(settings: Settings, db: Database, app: Celery) -> int:
    """Requeue expired leases, resend unsent or long-unclaimed jobs and runs; how many were sent."""
    resend_after = timedelta(seconds=settings.job_lease_seconds * RESEND_LEASES)
    with db.session() as session:
        job_ids = jobs.jobs_to_resend(session, UNSENT_AFTER, resend_after)
        run_ids = training.runs_to_resend(session, UNSENT_AFTER)
    sent_jobs = enqueue_jobs(app, db, job_ids, log)
    sent_runs = enqueue_runs(app, db, run_ids, log)
    if sent_jobs or sent_runs:
        log.info("sweeper resent %d jobs and %d training runs", sent_jobs, sent_runs)
    return sent_jobs + sent_runs
