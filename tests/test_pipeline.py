"""The whole pipeline with real parts: HTTP API → Redis → Celery worker processes → Postgres + S3.

Two worker processes (each loading the trained bundle) share the inference queue; the API runs
on a real HTTP server; S3 is a moto server and Postgres a fresh database. The embedded mode runs
the same flow with no servers at all.
"""

from __future__ import annotations

import io
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image
from sqlalchemy import select, update

from captioner.keys import local_admin_key
from captioner.processes import api_server, start_worker, stop, wait_ready
from captioner.service import migrate
from captioner_client import Client
from core.broker import SWEEP_TASK
from core.settings import from_env
from store.db import Database
from store.tables import Job, utcnow

WORKERS = ("one@pipeline", "two@pipeline")
BATCH = 8
STACK = {"workers": [("inference", name) for name in WORKERS], "trained_bundle": True,
         "batch_max_size": BATCH, "job_lease_seconds": 120}  # fmt: skip


@pytest.fixture(scope="module")
def val_images(shapes_dir) -> list[bytes]:
    """The held-out shapes images as PNG bytes."""
    return [p.read_bytes() for p in sorted((shapes_dir / "images" / "val").glob("*.png"))]


def job_rows(db: Database, ids) -> dict[str, Job]:
    with db.session() as session:
        rows = session.scalars(select(Job).where(Job.id.in_([uuid.UUID(i) for i in ids])))
        return {str(job.id): job for job in rows}


def test_concurrent_jobs_get_the_models_own_captions_once_each(
    stack, val_images, trained_bundle, encoder
):
    from model.bundle import load_bundle
    from model.images import decode_image
    from model.inference import Captioner

    images = val_images[:100]
    with ThreadPoolExecutor(16) as pool:  # 60 alone, 40 in one batch (packed, sent in chunks)
        submitted = list(pool.map(stack.client.submit, images[:60]))
    submitted += stack.client.submit_batch(images[60:]).jobs
    ended = stack.client.wait_all(submitted, timeout=600, progress=False)
    assert [job.status for job in ended] == ["succeeded"] * len(images)
    jobs = [job.raw for job in ended]

    direct = Captioner(load_bundle(trained_bundle), encoder).caption_batch(
        np.stack([decode_image(data) for data in images])
    )
    for job, expected in zip(jobs, direct, strict=True):
        result = job["result"]
        assert result["tokens"] == expected.tokens and result["caption"] == expected.text
        np.testing.assert_allclose(result["token_log_probs"], expected.log_probs, atol=1e-3)
        attention = stack.client.attention(job["id"])  # a grid per word
        assert attention.dtype == np.float16 and attention.shape == (len(expected.tokens), 8, 8)
        assert result["attention_shape"] == [len(expected.tokens), 64]
        np.testing.assert_allclose(attention.reshape(-1, 64), expected.attention, atol=2e-3)
        assert result["model_version"].startswith(trained_bundle.name)

    timings = [job["timings"] for job in jobs]
    assert max(t["batch_size"] for t in timings) > 1
    assert all(t["batch_size"] <= BATCH and t["predict_ms"] > 0 for t in timings)
    rows = job_rows(stack.db, [job["id"] for job in jobs])
    assert {row.attempts for row in rows.values()} == {1}  # no job was captioned twice
    assert {row.worker for row in rows.values()} == set(WORKERS)  # both workers took a share


def test_a_photo_is_flagged_out_of_distribution_and_shapes_images_are_not(stack, val_images):
    """The trained bundle carries its limits (model/limits.py): through worker, store and API,
    each caption has a confidence, and a photo, unlike any shapes image, is flagged."""
    from captioner.limits import demo_photo

    submitted = [stack.client.submit(image) for image in [demo_photo(), *val_images[:10]]]
    photo, *shapes = stack.client.wait_all(submitted, timeout=300, progress=False)
    assert {job.status for job in [photo, *shapes]} == {"succeeded"}
    assert all(0 <= job.caption.confidence <= 1 for job in [photo, *shapes])
    assert photo.warnings == ("out_of_distribution",)
    assert photo.caption.ood.flagged and photo.caption.ood.score > photo.caption.ood.threshold
    calm = [job for job in shapes if not job.caption.ood.flagged]
    assert len(calm) >= 8 and all(job.warnings == () for job in calm)  # 5 % of val: false alarms
    assert {job.caption.ood.threshold for job in shapes} == {photo.caption.ood.threshold}


def pause(stack) -> None:
    stack.celery.control.cancel_consumer("inference", destination=list(WORKERS), reply=True)


def resume(stack) -> None:
    stack.celery.control.add_consumer("inference", destination=list(WORKERS), reply=True)


def test_a_canceled_job_never_runs_and_bad_images_fail_while_workers_carry_on(stack, val_images):
    pause(stack)
    try:
        canceled, corrupt = (stack.client.submit(val_images[0]).id for _ in range(2))
        missing = stack.client.submit_batch([val_images[0]]).jobs[0].id  # in a pack: an object
        cut = stack.client.submit(val_images[0][:400]).id  # its header passes the API's check
        stack.client.cancel(canceled)
        with stack.db.session() as session:  # a small upload lives in its row
            broken = b"\x89PNG\r\n\x1a\n but the rest is gone"
            row = update(Job).where(Job.id == uuid.UUID(corrupt)).values(image_data=broken)
            session.execute(row)
            stack.blobs.delete(session.get(Job, uuid.UUID(missing)).image_key)
    finally:
        resume(stack)
    after = stack.client.submit(val_images[1], wait=60)
    assert after.status == "succeeded"
    ended = {job_id: stack.client.wait(job_id).raw for job_id in (canceled, corrupt, missing, cut)}
    queue = redis.Redis.from_url(stack.settings.broker_url)
    assert queue.llen("inference") == 0  # every message was consumed
    assert ended[canceled]["status"] == "canceled" and ended[canceled]["attempts"] == 0
    assert ended[canceled]["timings"]["started_at"] is None
    assert ended[corrupt]["error"]["code"] in {"corrupt_image", "not_an_image"}
    assert ended[missing]["error"]["code"] == "image_missing"
    assert ended[cut]["error"]["code"] == "corrupt_image"
    assert {ended[j]["status"] for j in (corrupt, missing, cut)} == {"failed"}


def test_the_sweeper_resends_a_job_whose_worker_died(stack, val_images):
    pause(stack)
    try:
        job_id = stack.client.submit(val_images[2]).id
        queue = redis.Redis.from_url(stack.settings.broker_url)
        queue.delete("inference")  # its message went with the worker
        expired = utcnow() - timedelta(seconds=1)
        with stack.db.session() as session:  # …which had claimed it, and its lease ran out
            session.execute(
                update(Job)
                .where(Job.id == uuid.UUID(job_id))
                .values(status="running", attempts=1, lease_expires_at=expired)
            )
    finally:
        resume(stack)
    stack.celery.send_task(SWEEP_TASK, queue="inference")
    job = stack.client.wait(job_id, timeout=120).raw
    assert (job["status"], job["attempts"]) == ("succeeded", 2)


def test_the_embedded_mode_runs_the_same_flow_with_no_servers(
    tmp_path: Path, trained_bundle, val_images
):
    settings = from_env(
        {
            "CAPTIONER_DATA_DIR": str(tmp_path / "data"),
            "MODEL_BUNDLE": str(trained_bundle),
            "BATCH_MAX_SIZE": "4",
        }
    )
    assert settings.embedded and settings.broker_url.startswith("filesystem")
    migrate(settings)
    key = local_admin_key(settings)
    assert (settings.data_dir / "api-key").stat().st_mode & 0o777 == 0o600
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log, "embedded@pipeline", gpus="all")  # one CPU worker here
    try:
        wait_ready(worker, log)
        with api_server(settings) as url, Client(url, key) as client:
            with ThreadPoolExecutor(6) as pool:
                submitted = list(pool.map(client.submit, val_images[:6]))
            jobs = client.wait_all(submitted, timeout=300, progress=False)
            picture = client.attention_png(jobs[0])
            attention = [client.attention(job) for job in jobs]
    finally:
        stop([worker])
    assert [job.status for job in jobs] == ["succeeded"] * 6
    for job, weights in zip(jobs, attention, strict=True):
        assert weights.shape == (len(job.caption.words), 8, 8)
    assert Image.open(io.BytesIO(picture)).format == "PNG"
