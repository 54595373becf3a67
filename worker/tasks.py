"""Thin Celery tasks: each takes an id and hands the work to the worker's resident state."""

from __future__ import annotations

import logging

from celery import Celery

from core.broker import (
    CAPTION_TASK,
    DELIVER_TASK,
    SWEEP_DELIVERIES_TASK,
    SWEEP_TASK,
    TRAIN_TASK,
)
from core.errors import StoreUnavailable, TemporaryFailure, WorkerOutcome
from core.logs import bound
from worker.sweeper import sweep

log = logging.getLogger(__name__)
DB_WAIT_S = 5.0  # a message whose claim or store found the database away waits this long


def register_tasks(app: Celery) -> None:
    """Attach the tasks to `app` (its `captioner` attribute holds the worker's state)."""

    @app.task(name=CAPTION_TASK, bind=True, max_retries=None)
    def caption(self, job_ids: list[str] | str) -> None:
        """Caption a chunk of jobs (one id in messages from before chunks); the ones already
        terminal or claimed elsewhere are skipped."""
        ids = [job_ids] if isinstance(job_ids, str) else job_ids
        with bound(job_id=ids[0] if len(ids) == 1 else None, job_ids=len(ids)):
            try:
                outcome = app.captioner.role("inference").caption()  # ids: for the log
            except TemporaryFailure as exc:  # the retry claims only the jobs put back in queue
                raise self.retry(exc=exc, countdown=exc.delay_s) from exc
            except StoreUnavailable as exc:  # claimed jobs come back when their lease ends
                log.warning("jobs %s: %s; the message is retried in %g s", ids[0], exc, DB_WAIT_S)
                raise self.retry(exc=exc, countdown=DB_WAIT_S) from None
            except WorkerOutcome as exc:
                outcome = exc.outcome
            log.info(
                "jobs %s: %s", ",".join(ids) if len(ids) < 3 else f"{ids[0]}… ({len(ids)})", outcome
            )

    @app.task(name=SWEEP_TASK, ignore_result=True)
    def sweep_jobs() -> int:
        """Send lost jobs again (scheduled by `captioner beat`)."""
        state = app.captioner
        return sweep(state.settings, state.database(), state.broker())

    @app.task(name=DELIVER_TASK, ignore_result=True)
    def deliver(delivery_id: str) -> None:
        """One attempt of a webhook delivery (the webhooks queue)."""
        with bound(delivery_id=delivery_id):
            log.info("delivery %s %s", delivery_id, app.captioner.sender().deliver(delivery_id))

    @app.task(name=SWEEP_DELIVERIES_TASK, ignore_result=True)
    def sweep_deliveries() -> int:
        """Send deliveries that are due (scheduled by `captioner beat` on the webhooks queue)."""
        return app.captioner.sender().sweep()

    @app.task(name=TRAIN_TASK, ignore_result=True)
    def train(run_id: str) -> None:
        """One training run, to its end (the training queue)."""
        with bound(run_id=run_id):
            try:
                outcome = app.captioner.role("training").run(run_id)
            except WorkerOutcome as exc:
                outcome = exc.outcome
            log.info("training run %s %s", run_id, outcome)
