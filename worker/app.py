"""The workers' Celery app: `create_worker_app(settings)`, or `celery -A worker.app:celery_app`.

Inference workers run Celery's threads pool: TensorFlow is not fork-safe, and the threads share
one resident model through the micro-batcher. The model loads in `celeryd_after_setup`, before
the worker consumes anything, so a worker is never handed jobs it cannot yet run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from celery import Celery, signals

from core.broker import SWEEP_DELIVERIES_TASK, SWEEP_TASK, Broker, make_celery
from core.logs import configure, native_stderr_logged
from core.metrics import serve
from core.settings import Settings, from_env
from store.db import Database
from store.deliveries import after_commit_sender
from store.payloads import worker_label
from worker.heartbeat import Activity, Heartbeat
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
    activity: Activity = field(default_factory=Activity)  # tasks in flight, the last error
    heartbeat: Heartbeat | None = None

    def database(self) -> Database:
        """The process's database; deliveries its transactions record go to the webhooks queue."""
        if self._database is None:
            self._database = Database(
                self.settings.database_url, pool_size=self.settings.db_pool_size
            )
            self._database.after_commit.append(after_commit_sender(self.broker().deliveries))
        return self._database

    def role(self, queue: str):
        """The state that runs tasks of `queue` (Inference or Training), if this worker has it."""
        state = getattr(self, queue)
        if state is None:
            raise RuntimeError(f"this worker does not consume the {queue} queue")
        return state

    def away(self) -> list[str]:
        """The dependencies this worker's jobs wait for now."""
        outages = [self.inference.blob_store] if self.inference is not None else []
        return [outage.dependency for outage in outages if outage.is_away]

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
        worker_hijack_root_logger=False,  # core.logs formats every line (see on_setup)
        worker_send_task_events=True,  # Flower's task view (-E), on by default
        task_send_sent_event=True,
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


def import_tensorflow() -> None:
    """Import TensorFlow now, before other threads start: its native start-up lines become log
    events (core.logs.native_stderr_logged), so a JSON log stays all JSON."""
    with native_stderr_logged("tensorflow"):
        import tensorflow  # noqa: F401


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
        settings, role = state.settings, ",".join(sorted(queues))
        configure(
            role, settings.log_format, settings.log_level, worker=worker_label(instance.hostname)
        )
        serve_metrics(settings)
        if {"training", "inference"} & set(queues):
            import_tensorflow()
        state.heartbeat = Heartbeat(
            state.database(),
            instance.hostname,
            role,
            state.activity,
            settings.model_poll_s,
            state.away,
        )
        state.heartbeat.start()  # before a model load that may wait: seen, with no version yet
        if "training" in queues:
            state.training = Training(settings, instance.hostname, state.database())
        if "inference" in queues:  # may wait here for the first promoted model
            state.inference = Inference(settings, instance.hostname, state.database())
            mark_ready(settings.ready_file, True)

    def on_shutdown(sender, **_) -> None:
        if sender.app is app:
            mark_ready(app.captioner.settings.ready_file, False)
            if app.captioner.heartbeat is not None:
                app.captioner.heartbeat.stop()
            if app.captioner.inference is not None:
                app.captioner.inference.close()
            app.captioner.database().dispose()

    # After -Q is applied, before the pool and the consumer start. Celery's own logging set-up
    # is skipped (a receiver of setup_logging): core.logs configures it in on_setup.
    signals.setup_logging.connect(lambda **_: None, weak=False)
    signals.celeryd_after_setup.connect(on_setup, weak=False)
    signals.worker_shutdown.connect(on_shutdown, weak=False)
    connect_activity(app)


def connect_activity(app: Celery) -> None:
    """Count this worker's running tasks and remember its last failure (its heartbeat says)."""

    def ours(task) -> bool:
        return getattr(task, "app", None) is app

    signals.task_prerun.connect(
        lambda task, **_: ours(task) and app.captioner.activity.started(), weak=False
    )
    signals.task_postrun.connect(
        lambda task, **_: ours(task) and app.captioner.activity.ended(), weak=False
    )
    signals.task_failure.connect(
        lambda sender, exception, **_: ours(sender) and app.captioner.activity.failed(exception),
        weak=False,
    )


def serve_metrics(settings: Settings) -> None:
    """This process's Prometheus endpoint on METRICS_PORT, plus its GPU's index when pinned to
    one (`--gpus all` starts one process per GPU); none when the port is 0 or taken."""
    if not settings.metrics_port:
        return
    pinned = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    port = settings.metrics_port + (int(pinned) if pinned.isdigit() else 0)
    try:
        serve(port)
        log.info("metrics on port %d", port)
    except OSError as exc:
        log.warning("no metrics endpoint: port %d: %s", port, exc)


def mark_ready(path: Path | None, ready: bool) -> None:
    """Create READY_FILE once the model is loaded (a readiness probe checks it); remove it."""
    if path is None:
        return
    if ready:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    else:
        path.unlink(missing_ok=True)


def __getattr__(name: str) -> Celery:
    # `celery -A worker.app:celery_app …` builds the app from the environment on first use,
    # so importing this module does nothing.
    if name == "celery_app":
        globals()["celery_app"] = create_worker_app()
        return globals()["celery_app"]
    raise AttributeError(name)
