"""Job records. Every status change is one guarded UPDATE, so a terminal status is never lost.

A change a webhook asked about records its delivery in the same transaction (see
`store.deliveries`): `start` when a job is first claimed, `completed` on every terminal status,
and a batch's `completed` once, when its last job ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from store.deliveries import Event, record_event, was_recorded
from store.models import TERMINAL, Batch, Job, JobStatus, as_utc, utcnow
from store.payloads import batch_json, job_json

DEFAULT_BEAM_SIZE = 1  # greedy
DEFAULT_MAX_LENGTH = 20  # words
WEBHOOK_EVENTS = ("start", "completed")  # what a job or a batch can ask to be told
DEFAULT_WEBHOOK_EVENTS = ("completed",)
# The event name each moment takes: job.started, batch.completed, training_run.progress, …
PAST = {"start": "started", "progress": "progress", "completed": "completed"}


@dataclass(frozen=True)
class NewJob:
    """What the API knows when it records a job."""

    owner: str
    image_key: str
    image_bytes: int
    image_format: str
    image_width: int
    image_height: int
    beam_size: int = DEFAULT_BEAM_SIZE
    max_length: int = DEFAULT_MAX_LENGTH
    webhook_url: str | None = None
    webhook_events: list[str] | None = None
    batch_id: uuid.UUID | None = None
    deadline_at: datetime | None = None
    id: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass(frozen=True)
class JobResult:
    """What a worker stores for a captioned image."""

    caption: str
    tokens: list[str]
    token_log_probs: list[float]
    model_version: str
    attention_key: str
    attention_shape: list[int]
    predict_ms: float
    batch_size: int


def create_job(session: Session, new: NewJob) -> Job:
    """Insert a queued job (flushed, not committed: the caller's session commits)."""
    job = Job(**asdict(new), status=JobStatus.QUEUED.value, attempts=0)
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: uuid.UUID, owner: str | None = None) -> Job | None:
    """The job, or None (also when it belongs to another owner)."""
    job = session.get(Job, job_id)
    return job if job is not None and owner in (None, job.owner) else None


def list_jobs(
    session: Session,
    owner: str,
    status: str | None = None,
    after: tuple[datetime, uuid.UUID] | None = None,
    limit: int = 50,
    batch_id: uuid.UUID | None = None,
) -> list[Job]:
    """An owner's jobs, newest first; `after` is the (created_at, id) of the last one seen."""
    query = select(Job).where(Job.owner == owner)
    if status:
        query = query.where(Job.status == status)
    if batch_id:
        query = query.where(Job.batch_id == batch_id)
    if after:
        created, job_id = after
        query = query.where(
            or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id))
        )
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    return list(session.scalars(query))


def mark_enqueued(session: Session, job_ids: Sequence[uuid.UUID]) -> None:
    """Record that the ids reached the broker (the sweeper re-sends those that did not)."""
    if not job_ids:
        return
    session.execute(update(Job).where(Job.id.in_(job_ids)).values(enqueued_at=utcnow()))


def _claimable(now: datetime):
    # Queued, or running under a lease that expired (its worker died mid-batch).
    return or_(
        Job.status == JobStatus.QUEUED.value,
        and_(Job.status == JobStatus.RUNNING.value, Job.lease_expires_at < now),
    )


def claim_jobs(
    session: Session,
    job_ids: Sequence[uuid.UUID],
    lease_seconds: int,
    max_attempts: int,
    worker: str | None = None,
) -> list[Job]:
    """Move claimable jobs to running (attempts + 1, leased) and return them.

    Jobs already terminal or leased elsewhere are skipped; jobs past their deadline become
    aborted, and jobs out of attempts fail, instead of running again.
    """
    now = utcnow()
    mine = and_(Job.id.in_(job_ids), _claimable(now))
    _finish_where(
        session,
        and_(mine, Job.deadline_at < now),
        JobStatus.ABORTED,
        "deadline_passed",
        "the job's deadline passed before it started",
        now,
    )
    _finish_where(
        session,
        and_(mine, Job.attempts >= max_attempts),
        JobStatus.FAILED,
        "too_many_attempts",
        f"gave up after {max_attempts} attempts",
        now,
    )
    claimed = _update_jobs(session, mine, {
        "status": JobStatus.RUNNING.value, "attempts": Job.attempts + 1, "started_at": now,
        "lease_expires_at": now + timedelta(seconds=lease_seconds), "worker": worker,
    })  # fmt: skip
    announce(session, claimed, "start")
    return claimed


def finish_job(session: Session, job: Job, result: JobResult) -> bool:
    """Store a caption on a running job; False when the job was meanwhile finished elsewhere."""
    now = utcnow()
    created, started = as_utc(job.created_at), as_utc(job.started_at) or now
    values = asdict(result) | {
        "status": JobStatus.SUCCEEDED.value,
        "finished_at": now,
        "lease_expires_at": None,
        "queue_ms": (started - created).total_seconds() * 1000,
        "total_ms": (now - created).total_seconds() * 1000,
    }
    running = and_(Job.id == job.id, Job.status == JobStatus.RUNNING.value)
    finished = _update_jobs(session, running, values)
    announce(session, finished, "completed")
    return bool(finished)


def fail_job(session: Session, job_id: uuid.UUID, code: str, message: str) -> bool:
    """Fail a job that is not yet terminal, with a stable code and a readable message."""
    where = and_(Job.id == job_id, Job.status.not_in(TERMINAL))
    return _finish_where(session, where, JobStatus.FAILED, code, message, utcnow()) == 1


def cancel_job(session: Session, job_id: uuid.UUID) -> bool:
    """Cancel a queued job (it will never run); False when it already started or ended."""
    queued = and_(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
    values = {"status": JobStatus.CANCELED.value, "finished_at": utcnow()}
    canceled = _update_jobs(session, queued, values)
    announce(session, canceled, "completed")
    return bool(canceled)


def release_job(session: Session, job_id: uuid.UUID) -> bool:
    """Put a running job back in the queue after a temporary failure (its attempt still counts)."""
    running = and_(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
    values = {"status": JobStatus.QUEUED.value, "lease_expires_at": None}
    return session.execute(update(Job).where(running).values(**values)).rowcount == 1


def jobs_to_resend(
    session: Session, unsent_after: timedelta, resend_after: timedelta
) -> list[uuid.UUID]:
    """Ids the sweeper should enqueue again, after requeueing running jobs whose lease expired.

    A queued job is sent again when it never reached the broker (`unsent_after` after creation)
    or when its message may have been lost (`resend_after` after the last send): duplicate
    messages are harmless, because only one claim of a job can succeed.
    """
    now = utcnow()
    lost = and_(Job.status == JobStatus.RUNNING.value, Job.lease_expires_at < now)
    requeued = session.scalars(
        update(Job).where(lost)
        .values(status=JobStatus.QUEUED.value, lease_expires_at=None)
        .returning(Job.id),
        execution_options={"synchronize_session": False},
    )  # fmt: skip
    ids = set(requeued)
    unsent = and_(Job.enqueued_at.is_(None), Job.created_at < now - unsent_after)
    stale = Job.enqueued_at < now - resend_after
    queued = and_(Job.status == JobStatus.QUEUED.value, or_(unsent, stale))
    ids.update(session.scalars(select(Job.id).where(queued)))
    return sorted(ids)


def _finish_where(session, where, status: JobStatus, code: str, message: str, now) -> int:
    values = {
        "status": status.value,
        "error_code": code,
        "error_message": message,
        "finished_at": now,
        "lease_expires_at": None,
    }
    finished = _update_jobs(session, where, values)
    announce(session, finished, "completed")
    return len(finished)


def _update_jobs(session: Session, where, values: dict) -> list[Job]:
    """UPDATE the matching jobs and return them as they are now."""
    statement = update(Job).where(where).values(**values).returning(Job)
    options = {"synchronize_session": False, "populate_existing": True}
    return list(session.scalars(statement, execution_options=options))


def batch_jobs(session: Session, batch_id: uuid.UUID) -> list[Job]:
    """The batch's jobs in submission order, as committed now."""
    query = select(Job).where(Job.batch_id == batch_id).order_by(Job.created_at, Job.id)
    return list(session.scalars(query, execution_options={"populate_existing": True}))


def wants(owner, when: str) -> bool:
    """Whether a job, batch or training run asked for a webhook on `when` (a key of PAST)."""
    return bool(owner and owner.webhook_url and when in (owner.webhook_events or ()))


def announce(session: Session, changed: Sequence[Job], when: str) -> None:
    """Record the deliveries owed now that `changed` jobs started or ended (`when`)."""
    for job in changed:
        if wants(job, when):
            event = Event(job.owner, "job", job.id, f"job.{PAST[when]}", job.webhook_url,
                          job_json(job))  # fmt: skip
            record_event(session, event)
    for batch_id in sorted({job.batch_id for job in changed if job.batch_id}):
        _announce_batch(session, batch_id, when)


def _announce_batch(session: Session, batch_id: uuid.UUID, when: str) -> None:
    """A batch starts with its first job and completes once, when its last job ends."""
    batch, event = session.get(Batch, batch_id), f"batch.{PAST[when]}"
    if not wants(batch, when) or was_recorded(session, batch_id, event):
        return
    if when == "completed":
        # Of two jobs ending at once, the one that locks second sees the other one ended.
        session.execute(select(Batch.id).where(Batch.id == batch_id).with_for_update())
    members = batch_jobs(session, batch_id)
    if when == "start" or all(JobStatus(job.status).is_terminal for job in members):
        data = batch_json(batch, members)
        record_event(session, Event(batch.owner, "batch", batch.id, event, batch.webhook_url, data))
