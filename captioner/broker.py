"""The Celery app both sides share: the API sends tasks by name, workers run them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from celery import Celery

from captioner.settings import Settings
from store import training
from store.db import Database
from store.deliveries import NEW as NEW_DELIVERIES
from store.jobs import mark_enqueued

QUEUES = ("inference", "training", "webhooks")
CAPTION_TASK = "worker.caption"  # the API enqueues by name and never imports worker code
SWEEP_TASK = "worker.sweep"
DELIVER_TASK = "worker.deliver"  # one webhook delivery attempt
SWEEP_DELIVERIES_TASK = "worker.sweep_deliveries"
TRAIN_TASK = "worker.train"  # one training run, on the training queue


def make_celery(settings: Settings, name: str = "captioner") -> Celery:
    """A Celery app on the configured broker (Redis, or folders under data_dir when embedded)."""
    app = Celery(name, broker=settings.broker_url)
    options = {}
    if settings.broker_url.startswith("filesystem://"):
        # Kombu's own filesystem transport can hand a consumer a half-written message.
        app.conf.broker_transport = "captioner.fstransport:Transport"
        folder = settings.data_dir / "broker"
        (folder / "out").mkdir(parents=True, exist_ok=True)
        (folder / "processed").mkdir(parents=True, exist_ok=True)
        (folder / "control").mkdir(parents=True, exist_ok=True)
        options = {
            "data_folder_in": str(folder / "out"),
            "data_folder_out": str(folder / "out"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),  # remote control (default: ./control)
            "store_processed": False,
            "polling_interval": 0.05,  # seconds; the default 1 s would add to every job's latency
        }
    else:
        # Longer than any task may run, or Redis hands an unacknowledged task out twice.
        options = {"visibility_timeout": 3600}
    app.conf.update(
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        task_default_queue="inference",
        task_acks_late=True,
        task_reject_on_worker_lost=True,  # a killed worker's jobs go back on the queue
        worker_prefetch_multiplier=1,
        task_ignore_result=True,  # Postgres is the record of every job, not Celery
        task_serializer="json",
        accept_content=["json"],
    )
    return app


def enqueue_caption(app: Celery, job_id: str) -> None:
    """Put a job id on the inference queue."""
    app.send_task(CAPTION_TASK, args=[job_id], queue="inference")


def enqueue_delivery(app: Celery, delivery_id: str, countdown: float = 0) -> None:
    """Put a webhook delivery on the webhooks queue (after `countdown` seconds)."""
    app.send_task(DELIVER_TASK, args=[delivery_id], queue="webhooks", countdown=countdown or None)


def enqueue_training(app: Celery, run_id: str) -> None:
    """Put a training run on the training queue."""
    app.send_task(TRAIN_TASK, args=[run_id], queue="training")


def send_each(send: Callable[[str], None], ids: Iterable, log: logging.Logger) -> list:
    """Call `send(str(id))` for each id until the broker refuses one (logged); the ids sent.

    What was not sent stays recorded in the database, for a sweeper to send later. Stopping at
    the first refusal spares the rest from each waiting out the same broker timeout.
    """
    sent = []
    for item in ids:
        try:
            send(str(item))
        except Exception:  # noqa: BLE001 - recorded in the database; a sweeper sends it later
            log.exception("could not enqueue %s", item)
            break
        sent.append(item)
    return sent


def enqueue_jobs(app: Celery, db: Database, job_ids: Iterable, log: logging.Logger) -> int:
    """Send jobs to the inference queue and mark those sent (the sweeper resends the rest)."""
    sent = send_each(lambda job_id: enqueue_caption(app, job_id), job_ids, log)
    if sent:
        with db.session() as session:
            mark_enqueued(session, sent)
    return len(sent)


def enqueue_runs(app: Celery, db: Database, run_ids: Iterable, log: logging.Logger) -> int:
    """Send training runs to the training queue and mark those sent."""
    sent = send_each(lambda run_id: enqueue_training(app, run_id), run_ids, log)
    if sent:
        with db.session() as session:
            training.mark_enqueued(session, sent)
    return len(sent)


def delivery_sender(app: Celery, log: logging.Logger) -> Callable[[dict], None]:
    """A `Database.after_commit` hook that sends the deliveries a transaction recorded."""

    def send(info: dict) -> None:
        send_each(lambda delivery_id: enqueue_delivery(app, delivery_id),
                  info.pop(NEW_DELIVERIES, ()), log)  # fmt: skip

    return send
