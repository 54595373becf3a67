"""The workers' Celery app: `create_worker_app(settings)`, or `celery -A worker.app:celery_app`.

Inference workers run Celery's threads pool: TensorFlow is not fork-safe, and the threads share
one resident model through the micro-batcher. The model loads in `celeryd_after_setup`, before
the worker consumes anything, so a worker is never handed jobs it cannot yet run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from celery import Celery, signals

from core.broker import SWEEP_DELIVERIES_TASK, SWEEP_TASK, Broker, make_celery
from core.settings import Settings, from_env
from store.db import Database
from store.deliveries import after_commit_sender
from worker.inference import Inference
from worker.tasks import register_tasks
from worker.training import Training
from worker.webhooks import Sender

log = logging.getLogger(__name__)


@dataclass
class WorkerState:
    """What one worker process keeps between tasks."""

    settings: Settings
    app: Celery
    inference: Inference | None = None  # only on workers that consume the inference queue
    training: Training | None = None  # only on workers that consume the training queue
    _database: Database | None = None
    _sender: Sender | None = None

    def database(self) -> Database:
        """The process's database; deliveries its transactions record go to the webhooks queue."""
        if self._database is None:
            self._database = Database(self.settings.database_url)
            self._database.after_commit.append(after_commit_sender(self.broker().deliveries))
        return self._database

    def role(self, queue: str):
        """The state that runs tasks of `queue` (Inference or Training), if this worker has it."""
        state = getattr(self, queue)
        if state is None:
            raise RuntimeError(f"this worker does not consume the {queue} queue")
        return state

    def broker(self) -> Broker:
        """Sends ids to the queues through this worker's app."""
        return Broker(self.app, log)

    def sender(self) -> Sender:
        """The process's webhook sender."""
        if self._sender is None:
            self._sender = Sender(self.settings, self.database(), self.broker())
        return self._sender


def create_worker_app(settings: Settings | None = None) -> Celery:
    """The Celery app with the tasks, the sweeper's schedule and the model-loading hooks."""
    settings = settings or from_env()
    app = make_celery(settings)
    app.conf.update(
        worker_pool="threads",
        # One batch computing while the next one's images are fetched and decoded.
        worker_concurrency=2 * settings.batch_max_size,
        beat_schedule={
            "sweep": sweep_entry(SWEEP_TASK, "inference", settings.sweep_interval_s),
            "sweep-deliveries": sweep_entry(
                SWEEP_DELIVERIES_TASK, "webhooks", settings.sweep_interval_s
            ),
        },
    )
    app.captioner = WorkerState(settings, app)
    register_tasks(app)
    connect_lifecycle(app)
    return app


def sweep_entry(task: str, queue: str, every_s: float) -> dict:
    """A beat entry that runs `task` on `queue` every `every_s` (a late one is dropped)."""
    return {"task": task, "schedule": every_s, "options": {"queue": queue, "expires": every_s}}


def connect_lifecycle(app: Celery) -> None:
    """Load the model when an inference worker starts; drain its batcher when it stops.

    A training worker sets up its (lazy) state here too.
    """

    def on_setup(sender, instance, **_) -> None:
        if instance.app is not app:
            return
        state, queues = app.captioner, app.amqp.queues.consume_from
        if "training" in queues:
            state.training = Training(state.settings, instance.hostname, state.database())
        if "inference" in queues:  # may wait here for the first promoted model
            state.inference = Inference(state.settings, instance.hostname, state.database())

    def on_shutdown(sender, **_) -> None:
        if sender.app is app:
            if app.captioner.inference is not None:
                app.captioner.inference.close()
            app.captioner.database().dispose()

    # After logging is set up and -Q applied, before the pool and the consumer start.
    signals.celeryd_after_setup.connect(on_setup, weak=False)
    signals.worker_shutdown.connect(on_shutdown, weak=False)


def __getattr__(name: str) -> Celery:
    # `celery -A worker.app:celery_app …` builds the app from the environment on first use,
    # so importing this module does nothing.
    if name == "celery_app":
        globals()["celery_app"] = create_worker_app()
        return globals()["celery_app"]
    raise AttributeError(name)
