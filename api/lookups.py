"""The caller's rows by id, for the routes that read them: another tenant's row answers as a
missing one does, a 404."""

from __future__ import annotations

import uuid

from api.auth import tenant
from api.errors import found
from store import batches, jobs, training
from store.tables import Batch, Job, TrainingRun


def find_job(session, job_id: uuid.UUID) -> Job:
    """The caller's job or a 404."""
    return found(jobs.get_job(session, job_id, owner=tenant()), "job", job_id)


def find_batch(session, batch_id: uuid.UUID) -> Batch:
    """The caller's batch or a 404."""
    return found(batches.get_batch(session, batch_id, owner=tenant()), "batch", batch_id)


def find_run(session, run_id: uuid.UUID) -> TrainingRun:
    """The caller's training run or a 404."""
    return found(training.get_run(session, run_id, owner=tenant()), "training_run", run_id)
