"""Job-finished notices over real Redis pub/sub, the polling fallback without Redis, and the
result backend every submitting thread shares."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from core.broker import make_celery
from core.notify import POLL_S, Notifier
from core.settings import from_env
from harness.stack import redis_database


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


def test_every_thread_sends_through_one_result_backend():
    # Celery built one per thread: 3.5 ms in the first submission of each gunicorn thread.
    app = make_celery(from_env())
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(app.backend)) for _ in range(3)]
    for thread in threads:
        thread.start()
        thread.join()
    assert all(backend is app.backend for backend in seen)
