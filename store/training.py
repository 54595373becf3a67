"""Training runs. Like jobs, every status change is one guarded UPDATE, and the webhook
deliveries it owes are recorded in the same transaction: `start` on the first claim, `progress`
at most once per PROGRESS_EVERY, `completed` on every terminal status.

A worker holds a run under a lease that its heartbeat renews; a run whose lease ran out (its
worker died) goes back to `queued` for the sweeper to send again, and resumes from its last
checkpoint.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from store.deliveries import Event, record_event
from store.jobs import PAST, wants
from store.payloads import run_json
from store.tables import RunStatus, TrainingRun, utcnow

PROGRESS_EVERY = timedelta(seconds=10)  # progress webhooks are throttled to one per this
EVENTS = ("start", "progress", "completed")  # what a run can ask to be told
QUEUED, RUNNING = RunStatus.QUEUED.value, RunStatus.RUNNING.value


@dataclass(frozen=True)
class NewRun:
    """What the API knows when it records a run."""

    owner: str
    dataset: dict[str, Any]
    hyperparameters: dict[str, Any]
    promotion: dict[str, Any]
    dataset_id: uuid.UUID | None = None
    base_version: int | None = None
    webhook_url: str | None = None
    webhook_events: list[str] | None = None
    id: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass(frozen=True)
class Heartbeat:
    """What the run's row says back to its worker on each heartbeat."""

    ours: bool  # False once the run was taken from this worker (its lease ran out)
    cancel: bool  # a cancel was asked for: stop at the next step


def create_run(session: Session, new: NewRun) -> TrainingRun:
    """Insert a queued run (flushed; the caller's session commits)."""
    run = TrainingRun(**vars(new), status=QUEUED, attempts=0, progress_events=0)
    session.add(run)
    session.flush()
    return run


def get_run(session: Session, run_id: uuid.UUID, owner: str | None = None) -> TrainingRun | None:
    """One run (of `owner`, if given), as committed now."""
    run = session.get(TrainingRun, run_id, populate_existing=True)
    return run if run is not None and owner in (None, run.owner) else None


def list_runs(session: Session, owner: str, limit: int = 50) -> list[TrainingRun]:
    """The owner's runs, newest first."""
    query = select(TrainingRun).where(TrainingRun.owner == owner)
    return list(session.scalars(query.order_by(TrainingRun.created_at.desc()).limit(limit)))


def mark_enqueued(session: Session, run_ids: list[uuid.UUID]) -> None:
    """Note that these runs' messages reached the broker."""
    if not run_ids:
        return
    query = update(TrainingRun).where(TrainingRun.id.in_(run_ids))
    session.execute(query.values(enqueued_at=utcnow()))


def claim_run(
    session: Session, run_id: uuid.UUID, worker: str, lease_s: float, max_attempts: int
) -> TrainingRun | None:
    """Take a queued run (attempts + 1, leased to `worker`), or None when it is not ours.

    A run out of attempts fails here instead (its worker died each time).
    """
    now = utcnow()
    queued = and_(TrainingRun.id == run_id, TrainingRun.status == QUEUED)
    spent = _update(
        session,
        queued & (TrainingRun.attempts >= max_attempts),
        _terminal(
            RunStatus.FAILED, "too_many_attempts", f"the run's worker stopped {max_attempts} times"
        ),
    )
    if spent:
        return None
    values = {
        "status": RUNNING,
        "attempts": TrainingRun.attempts + 1,
        "worker": worker,
        "lease_expires_at": now + timedelta(seconds=lease_s),
        "started_at": func.coalesce(TrainingRun.started_at, now),
    }  # a resume keeps it
    claimed = _update(session, queued, values)
    if claimed:
        _announce(session, claimed[0], "start")
    return claimed[0] if claimed else None


def heartbeat(
    session: Session, run_id: uuid.UUID, worker: str, lease_s: float, progress: dict | None = None
) -> Heartbeat:
    """Renew the lease, store the latest progress, and announce it if the throttle allows."""
    now = utcnow()
    mine = and_(
        TrainingRun.id == run_id, TrainingRun.status == RUNNING, TrainingRun.worker == worker
    )
    values: dict[str, Any] = {"lease_expires_at": now + timedelta(seconds=lease_s)}
    if progress is not None:
        values["progress"] = progress
    rows = _update(session, mine, values)
    if not rows:
        return Heartbeat(ours=False, cancel=False)
    run = rows[0]
    if progress is not None and wants(run, "progress"):
        _announce_progress(session, run, now)
    return Heartbeat(ours=True, cancel=run.cancel_requested_at is not None)


def _announce_progress(session: Session, run: TrainingRun, now) -> None:
    """Announce progress unless the last announcement was less than PROGRESS_EVERY ago."""
    due = or_(
        TrainingRun.progress_announced_at.is_(None),
        TrainingRun.progress_announced_at <= now - PROGRESS_EVERY,
    )
    values = {"progress_announced_at": now, "progress_events": TrainingRun.progress_events + 1}
    rows = _update(session, (TrainingRun.id == run.id) & due, values)
    if rows:
        _announce(session, rows[0], "progress", sequence=rows[0].progress_events)


def record_epoch(session: Session, run_id: uuid.UUID, worker: str, history: list[dict]) -> bool:
    """Store the validation history after an epoch; False if the run is no longer ours."""
    mine = and_(
        TrainingRun.id == run_id, TrainingRun.worker == worker, TrainingRun.status == RUNNING
    )
    return bool(_update(session, mine, {"history": history}))


def finish_run(
    session: Session, run_id: uuid.UUID, worker: str, status: RunStatus, **values: Any
) -> bool:
    """End a running run of `worker` with a terminal status and outcome fields."""
    mine = and_(
        TrainingRun.id == run_id, TrainingRun.worker == worker, TrainingRun.status == RUNNING
    )
    changed = _update(session, mine, _terminal(status) | values)
    return bool(changed)


def cancel_run(session: Session, run_id: uuid.UUID) -> TrainingRun | None:
    """Cancel a queued run now, or ask a running one to stop at its next step.

    None when the run had already ended.
    """
    queued = and_(TrainingRun.id == run_id, TrainingRun.status == QUEUED)
    canceled = _update(
        session, queued, _terminal(RunStatus.CANCELED, "canceled", "canceled before it started")
    )
    if canceled:
        return canceled[0]
    running = and_(TrainingRun.id == run_id, TrainingRun.status == RUNNING)
    asked = _update(session, running, {"cancel_requested_at": utcnow()})
    return asked[0] if asked else None


def runs_to_resend(
    session: Session, unsent_after: timedelta, all_queued: bool = False
) -> list[uuid.UUID]:
    """Runs whose worker died (lease ran out: back to queued), and queued runs never sent (or
    every queued run, when the broker lost its messages)."""
    now = utcnow()
    expired = and_(TrainingRun.status == RUNNING, TrainingRun.lease_expires_at < now)
    released = _update(session, expired, {"status": QUEUED, "lease_expires_at": None})
    unsent = TrainingRun.status == QUEUED
    if not all_queued:
        unsent = and_(
            unsent, TrainingRun.enqueued_at.is_(None), TrainingRun.created_at < now - unsent_after
        )
    never_sent = session.scalars(select(TrainingRun.id).where(unsent))
    return sorted({run.id for run in released} | set(never_sent))


def _terminal(status: RunStatus, code: str | None = None, message: str | None = None) -> dict:
    values = {"status": status.value, "finished_at": utcnow(), "lease_expires_at": None}
    return values | ({"error_code": code, "error_message": message} if code else {})


def _update(session: Session, where, values: dict) -> list:
    """UPDATE the matching runs, announce those that became terminal, return them."""
    statement = update(TrainingRun).where(where).values(**values).returning(TrainingRun)
    options = {"synchronize_session": False, "populate_existing": True}
    rows = list(session.scalars(statement, execution_options=options))
    for run in rows:
        if RunStatus(run.status).is_terminal:
            _announce(session, run, "completed")
    return rows


def _announce(session: Session, run: TrainingRun, when: str, sequence: int = 0) -> None:
    if wants(run, when):
        event = Event(
            run.owner,
            "training_run",
            run.id,
            f"training_run.{PAST[when]}",
            run.webhook_url,
            run_json(run),
        )
        record_event(session, event, sequence)
