"""Leases follow the work, and attempts are fenced: real worker processes whose batches (a
stand-in model of fixed cost) take longer than a job's lease, with beat sweeping every second."""

from __future__ import annotations

import os
import signal
import time
import uuid

from sqlalchemy import select

from store.tables import Job
from tests.helpers import png

FIRST, SECOND = "first@leases", "second@leases"
LEASE_S, BATCH_S = 2, 2.5  # every batch outlives the lease of the jobs in it
STACK = {"workers": [("inference", FIRST)], "beat": True, "trained_bundle": True,
         "batch_max_size": 4, "job_lease_seconds": LEASE_S, "sweep_interval_s": 1.0,
         "bench_standin_model_ms": BATCH_S * 1000}  # fmt: skip


def row(stack, job_id: str) -> Job:
    with stack.db.session() as session:
        return session.scalars(select(Job).where(Job.id == uuid.UUID(job_id))).one()


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_batches_longer_than_the_lease_finish_every_job_once(stack):
    seen = len(stack.log(FIRST).read_text())  # the paused-worker test may have run first
    batch = stack.client.submit_batch([png((40 + i, 30)) for i in range(8)])
    ids = [job.id for job in batch.jobs]
    ids += [stack.client.submit(png((60, 20 + i))).id for i in range(4)]
    ended = [job.raw for job in stack.client.wait_all(ids, timeout=120, progress=False)]
    assert [job["status"] for job in ended] == ["succeeded"] * len(ids)
    assert [job["attempts"] for job in ended] == [1] * len(ids)  # never taken for lost
    assert max(job["timings"]["total_ms"] for job in ended) > 2 * LEASE_S * 1000
    log = stack.log(FIRST).read_text()[seen:]
    assert "stale" not in log and "too_many_attempts" not in log


def test_a_paused_attempt_cannot_change_a_job_another_worker_finished(stack):
    job_id = stack.client.submit(png()).id
    first = stack.processes[FIRST]
    wait_until(lambda: row(stack, job_id).status == "running", 30, "the first claim")
    os.kill(first.pid, signal.SIGSTOP)  # mid-batch: no heartbeat, the lease runs out
    try:
        stack.start_worker("inference", SECOND)  # it runs the sweeps, then the job again
        job = stack.client.wait(job_id, timeout=120).raw
        finished = row(stack, job_id)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert (job["status"], job["attempts"], finished.worker) == ("succeeded", 2, SECOND)
    stale = f"job {job_id}: attempt"
    wait_until(lambda: stale in stack.log(FIRST).read_text(), 30, "the stale attempt's end")
    again = row(stack, job_id)
    columns = ("status", "worker", "attempt_token", "caption", "finished_at", "attempts")
    assert [getattr(again, c) for c in columns] == [getattr(finished, c) for c in columns]
