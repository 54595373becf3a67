"""The sweeper: jobs and training runs whose worker died, or whose message never reached the
queue, are sent again; after the broker lost its data (a marker key is gone), every queued job
is sent again at the next sweep."""

from __future__ import annotations

import logging
from datetime import timedelta

from core.broker import Broker
from core.settings import Settings
from store import jobs, training
from store.db import Database

log = logging.getLogger(__name__)
UNSENT_AFTER = timedelta(seconds=30)  # the API marks a job sent right after committing it
RESEND_LEASES = 4  # a queued job unclaimed for this many leases may have lost its message


def sweep(settings: Settings, db: Database, broker: Broker) -> int:
    """Requeue expired leases, resend unsent or long-unclaimed jobs and runs; how many were sent."""
    resend_after = timedelta(seconds=settings.job_lease_seconds * RESEND_LEASES)
    lost = broker.lost_messages()
    if lost:
        log.warning("the broker holds none of its earlier messages: every queued job is resent")
    with db.session() as session:
        job_ids = jobs.jobs_to_resend(session, UNSENT_AFTER, resend_after, all_queued=lost)
        run_ids = training.runs_to_resend(session, UNSENT_AFTER, all_queued=lost)
    sent_jobs = broker.jobs(job_ids, per_message=settings.batch_max_size)
    sent_runs = broker.runs(run_ids)
    with db.session() as session:
        jobs.mark_enqueued(session, sent_jobs)
        training.mark_enqueued(session, sent_runs)
    if sent_jobs or sent_runs:
        log.info("sweeper resent %d jobs and %d training runs", len(sent_jobs), len(sent_runs))
    return len(sent_jobs) + len(sent_runs)
