"""Redis loses every message (as after a restart without persistence): the sweeper notices at
its next run and sends every queued job again, instead of waiting for them to look lost."""

from __future__ import annotations

import time

import redis
from sqlalchemy import func, select

from store.tables import TERMINAL, Job
from tests.helpers import png

WORKER = "loss@stack"
SWEEP_S = 2.0
STACK = {"workers": [("inference", WORKER)], "beat": True, "trained_bundle": True,
         "batch_max_size": 8, "sweep_interval_s": SWEEP_S, "job_lease_seconds": 30,
         "bench_standin_model_ms": 50}  # fmt: skip


def ended(stack, ids) -> int:
    with stack.db.session() as session:
        query = select(func.count()).where(Job.id.in_(ids), Job.status.in_(TERMINAL))
        return session.scalar(query)


def test_after_the_broker_loses_its_data_every_job_ends_within_two_sweeps(stack):
    stack.celery.control.cancel_consumer("inference", destination=[WORKER], reply=True)
    try:
        batches = [
            stack.client.submit_batch([png((30 + i, 20 + n)) for i in range(40)]) for n in range(3)
        ]
        queue = redis.Redis.from_url(stack.settings.broker_url)
        assert queue.llen("inference") >= 10  # 15 messages of 8 jobs wait
        # The stack's own database only: FLUSHALL would also empty other tests' databases.
        queue.flushdb()
        flushed = time.monotonic()
    finally:
        stack.celery.control.add_consumer("inference", destination=[WORKER], reply=True)
    ids = [job.id for batch in batches for job in batch.jobs]
    while ended(stack, ids) < len(ids) and time.monotonic() - flushed < 120:
        time.sleep(0.1)
    took = time.monotonic() - flushed
    drain_s = 10  # 15 batches of 50 ms and their round trips, with room for a slow machine
    assert ended(stack, ids) == len(ids) and took < 2 * SWEEP_S + drain_s, took
    jobs = [stack.client.job(job_id) for job_id in ids[::10]]
    assert {job.status for job in jobs} == {"succeeded"}
