"""The fleet's state, as Postgres records it: what /metrics reports at each scrape."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from store.tables import (
    Delivery,
    DeliveryStatus,
    Job,
    JobStatus,
    RunStatus,
    TrainingRun,
    WorkerModel,
    utcnow,
)

IN_FLIGHT = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


@dataclass
class RunningRun:
    """A running training run's latest numbers."""

    run_id: str
    epoch: int
    loss: float | None
    validation: dict[str, float] = field(default_factory=dict)  # the last epoch's metrics


@dataclass
class Fleet:
    """Counts at one moment."""

    jobs: dict[str, int]  # queued, running
    runs: dict[str, int]  # every run status
    running_runs: list[RunningRun]
    deliveries_pending: int
    workers: dict[str, int]  # by role, seen within the window


def fleet(session: Session, seen_within_s: float) -> Fleet:
    """Queued and running jobs, runs by status, running runs' progress, pending deliveries and
    workers by role seen lately: five queries."""
    jobs = dict(
        session.execute(
            select(Job.status, func.count()).where(Job.status.in_(IN_FLIGHT)).group_by(Job.status)
        ).all()
    )
    runs = dict(
        session.execute(select(TrainingRun.status, func.count()).group_by(TrainingRun.status)).all()
    )
    running = session.scalars(
        select(TrainingRun).where(TrainingRun.status == RunStatus.RUNNING.value)
    ).all()
    pending = session.scalar(
        select(func.count())
        .select_from(Delivery)
        .where(Delivery.status == DeliveryStatus.PENDING.value)
    )
    since = utcnow() - timedelta(seconds=seen_within_s)
    role = func.coalesce(WorkerModel.role, "inference")  # rows from before 0009
    workers = dict(
        session.execute(
            select(role, func.count()).where(WorkerModel.seen_at >= since).group_by(role)
        ).all()
    )
    return Fleet(
        jobs={s: jobs.get(s, 0) for s in IN_FLIGHT},
        runs={s.value: runs.get(s.value, 0) for s in RunStatus},
        running_runs=[running_run(run) for run in running],
        deliveries_pending=pending or 0,
        workers={"inference": 0} | workers,
    )


def running_run(run: TrainingRun) -> RunningRun:
    """A run's epoch and loss from its progress, and its last validation metrics."""
    progress, history = run.progress or {}, run.history or []
    last = history[-1] if history else {}
    numbers = {k: float(v) for k, v in last.items() if k != "epoch" and type(v) in (int, float)}
    return RunningRun(str(run.id), int(progress.get("epoch", 0)), progress.get("loss"), numbers)
