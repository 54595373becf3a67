"""Claims coalesce across messages and tenants take turns: a real API and a real worker whose
model is a stand-in of fixed cost, so the queue grows while a batch runs."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

from captioner_client import Client
from harness.stack import admin_key
from store.tables import Job
from tests.helpers import png

BATCH, BATCH_S = 16, 0.25
STACK = {"workers": ["inference"], "trained_bundle": True, "batch_max_size": BATCH,
         "bench_standin_model_ms": BATCH_S * 1000}  # fmt: skip


def rows(stack, ids: list[str]) -> list[Job]:
    with stack.db.session() as session:
        wanted = [uuid.UUID(job_id) for job_id in ids]
        return list(session.query(Job).filter(Job.id.in_(wanted)))


def test_single_submissions_run_in_full_batches_while_the_model_is_busy(stack):
    images = [png((40 + i % 50, 30 + i // 50)) for i in range(200)]
    with ThreadPoolExecutor(16) as clients:  # one image per request, as most callers send
        ids = list(clients.map(lambda image: stack.client.submit(image).id, images))
    ended = stack.client.wait_all(ids, timeout=180, progress=False)
    assert {job.status for job in ended} == {"succeeded"}
    sizes = [job.raw["timings"]["batch_size"] for job in ended]
    assert sum(sizes) / len(sizes) >= 0.75 * BATCH, sorted(sizes)


def test_a_second_tenant_waits_behind_no_backlog(stack):
    other = Client(stack.client.base_url, admin_key(stack.db, "second tenant"))
    backlog = [
        job.id
        for _ in range(3)
        for job in stack.client.submit_batch([png((30 + i, 30)) for i in range(100)]).jobs
    ]
    single = other.submit(png((90, 90))).id
    done = other.wait_all([single], timeout=60, progress=False)[0]
    assert done.status == "succeeded"
    jobs = rows(stack, backlog)
    (mine,) = rows(stack, [single])
    ahead = [job for job in jobs if job.started_at and mine.created_at < job.started_at]
    ahead = [job for job in ahead if job.started_at < mine.started_at]
    assert len(ahead) <= 2 * BATCH  # at most the claim being prepared, and the one with it
    unfinished = [job for job in jobs if job.status != "succeeded"]
    assert len(unfinished) >= len(backlog) / 2  # the backlog was still draining
    stack.client.wait_all(backlog, timeout=180, progress=False)
    other.close()
