"""Job-finished notices over real Redis pub/sub, and the polling fallback without Redis."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from captioner.stack import redis_database
from core.notify import POLL_S, Notifier


@pytest.fixture(scope="module")
def redis_url():
    with redis_database() as url:
        yield url


def test_a_waiting_request_wakes_when_its_job_is_announced(redis_url):
    notifier, job_id = Notifier(redis_url), uuid.uuid4()
    with notifier.listening(job_id) as pause:
        threading.Timer(0.1, notifier.finished, args=[job_id]).start()
        started = time.monotonic()
        pause(30)
        assert time.monotonic() - started < 0.9  # woken by the notice, not the fallback


def test_another_jobs_notice_does_not_wake_it(redis_url):
    notifier, job_id = Notifier(redis_url), uuid.uuid4()
    with notifier.listening(job_id) as pause:
        notifier.finished(uuid.uuid4())
        started = time.monotonic()
        pause(0.3)
        assert time.monotonic() - started >= 0.25


def test_without_redis_waiting_polls_and_announcing_does_nothing():
    notifier = Notifier("filesystem://")
    notifier.finished(uuid.uuid4())
    with notifier.listening(uuid.uuid4()) as pause:
        started = time.monotonic()
        pause(30)
        assert time.monotonic() - started < POLL_S + 0.2
