"""Job-finished notices over Redis pub/sub, so `Prefer: wait` answers without polling.

Workers announce each job they finish; an API request holding for a job listens on that job's
channel. A notice is only a hint to read the job again from the database (the record), so a
lost one costs at most `FALLBACK_S` of delay. With the embedded filesystem broker there is no
pub/sub, and waiting falls back to reading the database every `POLL_S`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import redis

log = logging.getLogger(__name__)
POLL_S = 0.02  # without pub/sub: how often a waiting request reads the job
# With pub/sub: the longest wait before reading the job again anyway. Every path that ends a job
# announces it, so this only covers a lost notice; at 1 s, 100 waiting requests cost the API a
# quarter of a core in re-reads.
FALLBACK_S = 5.0


def channel(job_id: uuid.UUID | str) -> str:
    """The pub/sub channel of one job."""
    return f"captioner:job-finished:{job_id}"


class Notifier:
    """Publishes and awaits job-finished notices on the broker's Redis (a no-op without one)."""

    def __init__(self, broker_url: str) -> None:
        is_redis = broker_url.startswith(("redis://", "rediss://"))
        self._redis = redis.Redis.from_url(broker_url) if is_redis else None

    def finished(self, job_id: uuid.UUID | str) -> None:
        """Announce that a job reached a terminal status (best effort)."""
        if self._redis is None:
            return
        try:
            self._redis.publish(channel(job_id), b"1")
        except redis.RedisError as exc:
            log.warning("could not announce job %s: %s", job_id, exc)

    def finished_many(self, job_ids: Iterable[uuid.UUID | str]) -> None:
        """Announce several jobs at once, in one round trip (best effort)."""
        if self._redis is None:
            return
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.publish(channel(job_id), b"1")
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not announce finished jobs: %s", exc)

    @contextmanager
    def listening(self, job_id: uuid.UUID | str) -> Iterator[Callable[[float], None]]:
        """Yield `pause(seconds)`, which returns early once the job is announced finished."""
        if self._redis is None:
            yield lambda seconds: time.sleep(min(seconds, POLL_S))
            return
        pubsub = self._redis.pubsub()
        try:
            pubsub.subscribe(channel(job_id))
            pubsub.get_message(timeout=FALLBACK_S)  # the confirmation: from here on, we hear it
            yield lambda seconds: pubsub.get_message(timeout=min(seconds, FALLBACK_S))
        finally:
            pubsub.close()
