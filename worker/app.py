"""The workers' Celery app: `create_worker_app(settings)`, or `celery -A worker.app:celery_app`.

Inference workers run Celery's threads pool: TensorFlow is not fork-safe, and the threads share
one resident model through the micro-batcher. The model loads in `celeryd_after_setup`, before
the worker consumes anything, so a worker is never handed jobs it cannot yet run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from celery import Celery, signals

from captioner.broker import SWEEP_TASK, make_celery
from captioner.settings import Settings, from_env
from store.db import Database
from worker.inference import Inference
from worker.tasks import register_tasks

log = logging.getLogger(__name__)
SWEEP_EVERY_S = 30


@dataclass
class WorkerState:
    """What one worker process keeps between tasks."""

    settings: Settings
    inference: Inference | None = None  # only on workers that consume the inference queue
    _database: Database | None = None

    def database(self) -> Database:
        """The process's database (the inference runtime's, when there is one)."""
        if self.inference is not None:
            return self.inference.db
        if self._database is None:
            self._database = Database(self.settings.database_url)
        return self._database


def create_worker_app(settings: Settings | None = None) -> Celery:
    """The Celery app with the tasks, the sweeper's schedule and the model-loading hooks."""
    settings = settings or from_env()
    app = make_celery(settings)
    app.conf.update(
        worker_pool="threads",
        # One batch computing while the next one's images are fetched and decoded.
        worker_concurrency=2 * settings.batch_max_size,
        beat_schedule={
            "sweep": {
                "task": SWEEP_TASK,
                "schedule": SWEEP_EVERY_S,
                "options": {"queue": "inference", "expires": SWEEP_EVERY_S},
            }
        },
    )
    app.captioner = WorkerState(settings)
    register_tasks(app)
    connect_lifecycle(app)
    return app


def connect_lifecycle(app: Celery) -> None:
    """Load the model when an inference worker starts; drain its batcher when it stops."""

    def on_setup(sender, instance, **_) -> None:
        if instance.app is app and "inference" in app.amqp.queues.consume_from:
            app.captioner.inference = Inference(app.captioner.settings, instance.hostname)

    def on_shutdown(sender, **_) -> None:
        if sender.app is app and app.captioner.inference is not None:
            app.captioner.inference.close()

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
