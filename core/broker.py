"""The queues and the Celery app both sides share: the API sends tasks by name, workers run them.

`Broker` puts ids on the queues. It only sends; recording what was sent is the caller's (the
database is the record, and a sweeper sends again whatever it shows unsent).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import redis
from celery import Celery

from core.settings import Settings

QUEUES = ("inference", "training", "webhooks")
CAPTION_TASK = "worker.caption"  # the API enqueues by name and never imports worker code
SWEEP_TASK = "worker.sweep"
DELIVER_TASK = "worker.deliver"  # one webhook delivery attempt
SWEEP_DELIVERIES_TASK = "worker.sweep_deliveries"
TRAIN_TASK = "worker.train"  # one training run, on the training queue
MARKER_KEY = "captioner:broker-marker"  # gone from Redis means its queued messages are gone too
BROKER_TIMEOUT_S = 2.0  # to connect to Redis, or for its answer
AWAY_S = 5.0  # after a send fails, the sends of the next seconds are not tried (nor waited for)


def make_celery(settings: Settings, name: str = "captioner") -> Celery:
    """A Celery app on the configured broker (Redis, or folders under data_dir when embedded)."""
    app = Celery(name, broker=settings.broker_url)
    if settings.broker_url.startswith("filesystem://"):
        # Kombu's own filesystem transport can hand a consumer a half-written message.
        app.conf.broker_transport = "core.fstransport:Transport"
        options = filesystem_options(settings.data_dir / "broker")
    else:
        # Longer than any task may run, or Redis hands an unacknowledged task out twice. A Redis
        # that hangs (stopped, or a network that drops packets) fails a send in seconds rather
        # than holding the submission that sends it.
        options = {
            "visibility_timeout": 3600,
            "socket_timeout": BROKER_TIMEOUT_S,
            "socket_connect_timeout": BROKER_TIMEOUT_S,
        }
    app.conf.update(
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        task_default_queue="inference",
        task_acks_late=True,
        task_reject_on_worker_lost=True,  # a killed worker's jobs go back on the queue
        worker_prefetch_multiplier=1,
        task_ignore_result=True,  # Postgres is the record of every job, not Celery
        # Results are off, so the (disabled) result backend holds nothing: one for all threads.
        # Else each new thread's first send_task builds its own, 3.5 ms, paid in the first
        # submission each of gunicorn's 64 threads per process serves.
        result_backend_thread_safe=True,
        task_serializer="json",
        accept_content=["json"],
        # One quick retry (a pooled connection Redis closed); a broker that is away is the
        # sweeper's to catch up with, not the submission's to wait for (`Broker.away_until`).
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0},
        broker_connection_timeout=BROKER_TIMEOUT_S,
    )
    return app


def filesystem_options(folder: Path, polling_interval: float = 0.05) -> dict:
    """The embedded broker's transport options: every folder it writes lies under `folder`."""
    folders = {
        "data_folder_in": "out",
        "data_folder_out": "out",
        "processed_folder": "processed",
        "control_folder": "control",
    }
    for sub in set(folders.values()):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return {key: str(folder / sub) for key, sub in folders.items()} | {
        "store_processed": False,
        "polling_interval": polling_interval,  # seconds; kombu's 1 s would add to every job
    }


class Broker:
    """Puts job, training-run and delivery ids on their queues, by task name."""

    def __init__(self, app: Celery, log: logging.Logger) -> None:
        self.app, self.log = app, log
        self.away_until = 0.0  # monotonic time until which the broker is taken to be away

    def jobs(self, job_ids: Sequence, per_message: int = 1) -> list:
        """Send jobs to the inference queue, `per_message` ids in each message (a worker claims
        and stores each message's jobs together); the ids sent (all, unless the broker refused
        one)."""
        chunks = [job_ids[i : i + per_message] for i in range(0, len(job_ids), per_message)]
        sent = self._send_each(CAPTION_TASK, "inference", [[str(i) for i in c] for c in chunks])
        return [job_id for chunk in chunks[: len(sent)] for job_id in chunk]

    def lost_messages(self) -> bool:
        """True once after the broker lost what it held (a Redis restart without persistence,
        a FLUSHALL): a marker key set here is gone. Also true on the very first call."""
        url = self.app.conf.broker_url
        if not url.startswith(("redis://", "rediss://")):
            return False  # the embedded broker's folders do not vanish on their own
        try:
            with redis.Redis.from_url(url) as client:
                return bool(client.set(MARKER_KEY, "1", nx=True))
        except redis.RedisError:  # down: nothing can be resent now; the next sweep asks again
            self.log.warning("could not check the broker's marker key", exc_info=True)
            return False

    def runs(self, run_ids: Iterable) -> list:
        """Send training runs to the training queue; the ids sent."""
        return self._send_each(TRAIN_TASK, "training", run_ids)

    def deliveries(self, delivery_ids: Iterable, countdown: float = 0) -> list:
        """Send webhook deliveries to the webhooks queue (after `countdown` s); the ids sent."""
        return self._send_each(DELIVER_TASK, "webhooks", delivery_ids, countdown or None)

    def queue_lengths(self, queues: Iterable[str] = QUEUES) -> dict[str, int]:
        """Messages waiting in each Redis queue ({} for the embedded broker). With prefetch,
        messages a worker already holds are not counted: Postgres knows those jobs."""
        url = self.app.conf.broker_url
        if not url.startswith(("redis://", "rediss://")):
            return {}
        with redis.Redis.from_url(url, socket_timeout=2) as client:
            return {queue: int(client.llen(queue)) for queue in queues}

    def check(self) -> None:
        """Raise unless the broker accepts a connection (for /readyz)."""
        with self.app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)

    def _send_each(self, task: str, queue: str, ids: Iterable, countdown=None) -> list:
        """Send each id until the broker refuses one (logged); the ids sent.

        What was not sent stays recorded in the database, for a sweeper to send later. Stopping
        at the first refusal spares the rest from each waiting out the same broker timeout, and
        for `AWAY_S` after it nothing is tried: while Redis is away, a submission answers in its
        usual time instead of waiting on a broker that does not answer.
        """
        sent: list = []
        if time.monotonic() < self.away_until:
            return sent
        for item in ids:
            try:
                args = [item if isinstance(item, list) else str(item)]
                self.app.send_task(task, args=args, queue=queue, countdown=countdown)
            except Exception as exc:  # noqa: BLE001 - recorded in the database; sent later
                self.away_until = time.monotonic() + AWAY_S
                self.log.warning("could not enqueue %s (not tried for %g s): %s", item, AWAY_S, exc)
                break
            sent.append(item)
        return sent
