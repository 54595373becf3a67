"""Job records. Every status change is one guarded UPDATE, so a terminal status is never lost.

Workers claim, finish and release jobs a chunk at a time. Each claim sets an attempt token on
its rows; finishing, failing or releasing applies only while a row still holds that token, so
an attempt whose job was meanwhile claimed again (its lease ran out) cannot change it.

A change a webhook asked about records its delivery in the same transaction (see
`store.deliveries`): `start` when a job is first claimed, `completed` on every terminal status,
and a batch's `completed` once, when its last job ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta

from sqlalchemy import (
    DateTime,
    String,
    Uuid,
    and_,
    case,
    cast,
    exists,
    func,
    literal,
    null,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.orm import Session, undefer

from core.options import DEFAULT_BEAM_SIZE, DEFAULT_MAX_LENGTH
from store.deliveries import Event, record_event, was_recorded
from store.payloads import batch_json, job_json
from store.tables import TERMINAL, Batch, Job, JobStatus, as_utc, utcnow

WEBHOOK_EVENTS = ("start", "completed")  # what a job or a batch can ask to be told
DEFAULT_WEBHOOK_EVENTS = ("completed",)
# The event name each moment takes: job.started, batch.completed, training_run.progress, …
PAST = {"start": "started", "progress": "progress", "completed": "completed"}
# How a job that had not started by its deadline ends (claimed late, or found by the sweeper).
DEADLINE_PASSED = "deadline_passed"
DEADLINE_MESSAGE = "the job's deadline passed before it started"
PICK_SPARE = 8  # a claim looks at this many times its limit: up to 7 claims at once all fill


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
    temperature: float = 0.0  # above 0: sampled with `seed`
    seed: int | None = None
    webhook_url: str | None = None
    webhook_events: list[str] | None = None
    batch_id: uuid.UUID | None = None
    deadline_at: datetime | None = None
    image_offset: int | None = None  # set when the image lies in a batch's pack
    image_data: bytes | None = None  # a small image kept in the row (image_key stays empty)
    image_url: str | None = None  # the worker fetches the image from here into image_key
    enqueued_at: datetime | None = None  # set when the caller sends it right after committing
    id: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass(frozen=True)
class JobResult:
    """What a worker stores for a captioned image."""

    caption: str
    tokens: list[str]
    token_log_probs: list[float]
    model_version: str
    attention: bytes | None  # the (T, 64) float16 weights as .npy
    attention_shape: list[int]
    predict_ms: float
    batch_size: int
    confidence: float | None = None  # calibrated probability the caption is right
    ood: dict | None = None  # {"score", "threshold", "flagged"}: the image unlike the training's


def values(record) -> dict:
    """A NewJob's or JobResult's fields as column values (shallow: `asdict` deep-copies every
    list, a cost paid per job)."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


def create_job(session: Session, new: NewJob) -> Job:
    """Insert a queued job (flushed, not committed: the caller's session commits)."""
    job = Job(**values(new), status=JobStatus.QUEUED.value, attempts=0)
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


def queued_by_owner(session: Session) -> dict[str, int]:
    """How many jobs wait in the queue, per owner: one pass over the queued rows
    (`store.queue_counts` reads it at most once a second per API process)."""
    query = select(Job.owner, func.count()).where(Job.status == JobStatus.QUEUED.value)
    return {owner: count for owner, count in session.execute(query.group_by(Job.owner))}


def mark_enqueued(session: Session, job_ids: Sequence[uuid.UUID]) -> None:
    """Record that the ids reached the broker (the sweeper re-sends those that did not)."""
    if not job_ids:
        return
    session.execute(update(Job).where(Job.id.in_(job_ids)).values(enqueued_at=utcnow()))


def mark_unsent(session: Session, job_ids: Sequence[uuid.UUID]) -> None:
    """Record that the ids did not reach the broker after all (the sweeper sends them)."""
    session.execute(update(Job).where(Job.id.in_(job_ids)).values(enqueued_at=None))


def _claimable(now: datetime):
    # Queued (and not held back after a temporary failure), or running under a lease that
    # expired (its worker died mid-batch).
    return or_(_queued_now(now), _lease_ran_out(now))


def _queued_now(now: datetime):
    """Queued jobs a claim may take now: on a queued row, `lease_expires_at` is the time a job
    put back after a temporary failure may run again (None: at once)."""
    due = or_(Job.lease_expires_at.is_(None), Job.lease_expires_at <= now)
    return and_(Job.status == JobStatus.QUEUED.value, due)


@dataclass(frozen=True)
class Claim:
    """What one claim took: the jobs now running under its attempt token."""

    token: uuid.UUID  # fences the attempt: finishing or failing needs the row to still hold it
    jobs: list[Job]
    ended: list[uuid.UUID] = field(default_factory=list)  # aborted or failed by the claim

    @property
    def ids(self) -> list[uuid.UUID]:
        """The ids of the claimed jobs."""
        return [job.id for job in self.jobs]


def claim_jobs(
    session: Session,
    job_ids: Sequence[uuid.UUID] | None,
    lease_seconds: float,
    max_attempts: int,
    worker: str | None = None,
    limit: int | None = None,
) -> Claim:
    """Move up to `limit` claimable jobs to running (attempts + 1, leased), in one UPDATE.

    The jobs are the next ones in fair order (`fair_pick`), among `job_ids` when given; rows
    another claim holds locked are skipped, not waited for. In the same statement, jobs past
    their deadline become aborted and jobs out of attempts fail, instead of running again.
    """
    now, token = utcnow(), uuid.uuid4()
    limit = len(job_ids) if limit is None and job_ids is not None else limit
    if not _any_claimable(session, now, job_ids):
        return Claim(token, [])
    picked = fair_pick(session, now, limit or 0, job_ids)
    late = and_(Job.deadline_at.is_not(None), Job.deadline_at < now)
    spent = Job.attempts >= max_attempts
    ends = or_(late, spent)
    changes = {
        "status": case(
            (late, JobStatus.ABORTED.value),
            (spent, JobStatus.FAILED.value),
            else_=JobStatus.RUNNING.value,
        ),
        "error_code": case(
            (late, DEADLINE_PASSED), (spent, "too_many_attempts"), else_=Job.error_code
        ),
        "error_message": case(
            (late, DEADLINE_MESSAGE),
            (spent, f"gave up after {max_attempts} attempts"),
            else_=Job.error_message,
        ),
        "attempts": case((ends, Job.attempts), else_=Job.attempts + 1),
        "started_at": case((ends, Job.started_at), else_=_at(now)),
        "finished_at": case((ends, _at(now)), else_=null()),
        "lease_expires_at": case((ends, null()), else_=_at(now + timedelta(seconds=lease_seconds))),
        "attempt_token": case((ends, null()), else_=cast(literal(token, Uuid), Uuid)),
        "worker": case((ends, Job.worker), else_=literal(worker, String)),
    }
    changed = _update_jobs(
        session, and_(Job.id.in_(picked), _claimable(now)), changes, undefer(Job.image_data)
    )
    claimed = [job for job in changed if job.status == JobStatus.RUNNING.value]
    ended = [job for job in changed if job not in claimed]
    announce(session, ended, "completed")
    announce(session, claimed, "start")
    return Claim(token, claimed, [job.id for job in ended])


def _any_claimable(session: Session, now: datetime, among) -> bool:
    """Whether any job is claimable now: two index probes. Under load most messages find the
    jobs they were sent for already taken by a claim of the next batch, and nothing waiting;
    this spares their claims the fair pick."""
    probes = (exists().where(_queued(now, among)), exists().where(_lease_ran_out(now, among)))
    return bool(session.scalar(select(or_(*probes))))


def fair_pick(session: Session, now: datetime, limit: int, among=None):
    """The ids of the next `limit` claimable jobs, tenants taking turns, locked (SKIP LOCKED).

    Each owner's queued jobs are numbered oldest first (their turn); the pick takes every
    owner's first job, then every owner's second, and so on, oldest first within a turn. So a
    tenant with one job waits for at most one claim behind another tenant's backlog of any size.
    Running jobs whose lease expired (their worker died) go first, at turn 0. Two claims at once
    take different jobs: rows the other holds locked are skipped, and a row it claimed meanwhile
    no longer matches when it is locked (Postgres checks it again).
    """
    spare = limit * PICK_SPARE  # room for rows another claim holds
    by_owner = _turns_by_owner if session.get_bind().dialect.name == "postgresql" else _turns
    turns = union_all(by_owner(now, spare, among), _expired(now, among)).subquery()
    ahead = select(turns).order_by(turns.c.turn, turns.c.created_at, turns.c.id).limit(spare)
    ahead = ahead.subquery()
    return (
        select(Job.id)
        .join(ahead, Job.id == ahead.c.id)
        .where(_claimable(now))
        .order_by(ahead.c.turn, ahead.c.created_at, ahead.c.id)
        .limit(limit)
        .with_for_update(of=Job, skip_locked=True)
        # Computed once: Postgres may scan a plain `IN (subquery)` again and lock past the limit.
        .cte("picked")
        .prefix_with("MATERIALIZED", dialect="postgresql")
        .select()
    )


def _queued(now: datetime, among):
    queued = _queued_now(now)
    return queued if among is None else and_(queued, Job.id.in_(among))


def _numbered(where, partition=None):
    """(id, created_at, turn) of the jobs matching `where`, numbered oldest first."""
    order = (Job.created_at, Job.id)
    turn = func.row_number().over(partition_by=partition, order_by=order).label("turn")
    return select(Job.id, Job.created_at, turn).where(where)


def _turns(now: datetime, first: int, among):
    """Every owner's first `first` queued jobs with their turns: one pass over the queue."""
    numbered = _numbered(_queued(now, among), Job.owner).subquery()
    return select(numbered).where(numbered.c.turn <= first)


def _turns_by_owner(now: datetime, first: int, among):
    """The same, owner by owner (Postgres): the owners with queued jobs are found one index
    probe each (`ix_jobs_queued`, a loose index scan), then each one's first `first` jobs, so
    the cost follows the owners and `first`, not the length of the queue."""
    queued = _queued(now, among)
    start = select(func.min(Job.owner).label("owner")).where(queued)
    owners = start.cte("owners", recursive=True)
    following = select(func.min(Job.owner)).where(queued, Job.owner > owners.c.owner)
    owners = owners.union_all(
        select(following.scalar_subquery()).where(owners.c.owner.is_not(None))
    )
    firsts = (
        _numbered(and_(queued, Job.owner == owners.c.owner))
        .order_by(Job.created_at, Job.id)
        .limit(first)
        .lateral("firsts")
    )
    return select(firsts).select_from(owners).join(firsts, true())


def _expired(now: datetime, among):
    """Running jobs whose lease expired, at turn 0."""
    return select(Job.id, Job.created_at, literal(0).label("turn")).where(
        _lease_ran_out(now, among)
    )


def _lease_ran_out(now: datetime, among=None):
    """Running jobs whose lease expired (their worker died), among `among` if given."""
    where = and_(Job.status == JobStatus.RUNNING.value, Job.lease_expires_at < now)
    return where if among is None else and_(where, Job.id.in_(among))


def _at(moment: datetime):
    return literal(moment, DateTime(timezone=True))


def extend_leases(session: Session, claims: Sequence[Claim], lease_seconds: float) -> int:
    """Renew the lease of every job still running under one of `claims`; how many were."""
    if not claims:
        return 0
    held = and_(
        Job.id.in_([job_id for claim in claims for job_id in claim.ids]),
        Job.attempt_token.in_([claim.token for claim in claims]),
        Job.status == JobStatus.RUNNING.value,
    )
    expires = utcnow() + timedelta(seconds=lease_seconds)
    return session.execute(update(Job).where(held).values(lease_expires_at=expires)).rowcount


def finish_jobs(
    session: Session, token: uuid.UUID, results: dict[uuid.UUID, JobResult]
) -> list[uuid.UUID]:
    """Store the captions of jobs still running under `token`; the ids that took them.

    The others were meanwhile re-claimed by another attempt or ended: their results are stale.
    """
    held = _held(session, token, list(results))
    now = utcnow()
    rows = [
        values(results[job.id])
        | {
            "id": job.id,
            "status": JobStatus.SUCCEEDED.value,
            "finished_at": now,
            "lease_expires_at": None,
            "queue_ms": _ms(job.created_at, job.started_at or now),
            "total_ms": _ms(job.created_at, now),
        }
        for job in held
    ]
    if rows:
        session.execute(update(Job), rows)  # one UPDATE by primary key, run for every row
        _announce_ended(session, held)
    return [job.id for job in held]


def _held(session: Session, token: uuid.UUID, job_ids: Sequence[uuid.UUID]) -> list:
    """The jobs among `job_ids` still running under `token`, locked until the commit (the
    columns finishing needs, not whole rows)."""
    columns = (
        Job.id,
        Job.created_at,
        Job.started_at,
        Job.batch_id,
        Job.webhook_url,
        Job.webhook_events,
    )
    held = and_(
        Job.id.in_(job_ids), Job.attempt_token == token, Job.status == JobStatus.RUNNING.value
    )
    query = select(*columns).where(held).with_for_update()
    return list(session.execute(query))


def _ms(start: datetime, end: datetime) -> float:
    return (as_utc(end) - as_utc(start)).total_seconds() * 1000


def _announce_ended(session: Session, ended: Sequence) -> None:
    """Announce jobs just ended by a bulk update (reloading them only when someone asked)."""
    batches = {b: session.get(Batch, b) for b in {job.batch_id for job in ended if job.batch_id}}
    wanted = [
        job.id
        for job in ended
        if wants(job, "completed") or wants(batches.get(job.batch_id), "completed")
    ]
    if wanted:
        query = select(Job).where(Job.id.in_(wanted))
        reloaded = session.scalars(query, execution_options={"populate_existing": True})
        announce(session, list(reloaded), "completed")


def fail_job(
    session: Session, job_id: uuid.UUID, code: str, message: str, token: uuid.UUID | None = None
) -> bool:
    """Fail a job that is not yet terminal (and, given `token`, still held by that attempt)."""
    where = and_(Job.id == job_id, Job.status.not_in(TERMINAL))
    if token is not None:
        where = and_(where, Job.attempt_token == token)
    return _finish_where(session, where, JobStatus.FAILED, code, message, utcnow()) == 1


def cancel_job(session: Session, job_id: uuid.UUID) -> bool:
    """Cancel a queued job (it will never run); False when it already started or ended."""
    queued = and_(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
    values = {"status": JobStatus.CANCELED.value, "finished_at": utcnow()}
    canceled = _update_jobs(session, queued, values)
    announce(session, canceled, "completed")
    return bool(canceled)


def abort_late_jobs(session: Session) -> list[uuid.UUID]:
    """Abort the queued jobs past their deadline (nobody claimed them in time), announcing
    each as a terminal change; their ids."""
    now = utcnow()
    late = and_(
        Job.status == JobStatus.QUEUED.value, Job.deadline_at.is_not(None), Job.deadline_at < now
    )
    values = {
        "status": JobStatus.ABORTED.value,
        "error_code": DEADLINE_PASSED,
        "error_message": DEADLINE_MESSAGE,
        "finished_at": now,
    }
    aborted = _update_jobs(session, late, values)
    announce(session, aborted, "completed")
    return [job.id for job in aborted]


def release_jobs(
    session: Session,
    token: uuid.UUID,
    job_ids: Sequence[uuid.UUID],
    after_s: float = 0,
    refund: bool = False,
) -> int:
    """Put jobs still held by `token` back in the queue after a temporary failure, to be
    claimed again no sooner than `after_s` from now; how many were. The attempt counts, unless
    `refund` (the job did nothing wrong: a store it needs was away).

    Without the wait, the next claim (any message wakes one) would retry them at once, and an
    outage of a few seconds would spend every attempt."""
    if not job_ids:
        return 0
    held = and_(
        Job.id.in_(job_ids), Job.attempt_token == token, Job.status == JobStatus.RUNNING.value
    )
    again = utcnow() + timedelta(seconds=after_s) if after_s else None
    values = {"status": JobStatus.QUEUED.value, "lease_expires_at": again, "attempt_token": None}
    if refund:
        values["attempts"] = Job.attempts - 1
    return session.execute(update(Job).where(held).values(**values)).rowcount


def jobs_to_resend(
    session: Session, unsent_after: timedelta, resend_after: timedelta, all_queued: bool = False
) -> list[uuid.UUID]:
    """Ids the sweeper should enqueue again, after requeueing running jobs whose lease expired.

    A queued job is sent again when it never reached the broker (`unsent_after` after creation)
    or when its message may have been lost (`resend_after` after the last send), or whenever
    `all_queued` (the broker lost its messages): duplicate messages are harmless, because only
    one claim of a job can succeed.
    """
    now = utcnow()
    lost = _lease_ran_out(now)
    requeued = session.scalars(
        update(Job)
        .where(lost)
        .values(status=JobStatus.QUEUED.value, lease_expires_at=None, attempt_token=None)
        .returning(Job.id),
        execution_options={"synchronize_session": False},
    )
    ids = set(requeued)
    unsent = and_(Job.enqueued_at.is_(None), Job.created_at < now - unsent_after)
    stale = Job.enqueued_at < now - resend_after
    queued = Job.status == JobStatus.QUEUED.value
    if not all_queued:
        queued = and_(queued, or_(unsent, stale))
    query = select(Job.id).where(queued).order_by(Job.created_at)
    return sorted(ids) + [job_id for job_id in session.scalars(query) if job_id not in ids]


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


def _update_jobs(session: Session, where, values: dict, *options) -> list[Job]:
    """UPDATE the matching jobs and return them as they are now (loader `options` apply)."""
    statement = update(Job).where(where).values(**values).returning(Job).options(*options)
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
            event = Event(
                job.owner, "job", job.id, f"job.{PAST[when]}", job.webhook_url, job_json(job)
            )
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
