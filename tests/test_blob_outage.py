"""The blob store away (its endpoint unreachable, its data kept): every route that needs it
answers 503 `blob_store_unavailable` with Retry-After and records nothing; a worker keeps the
jobs it could not read queued, without spending their attempts, and captions them once the
store is back. Real Postgres, Redis, moto S3 behind a gate that is closed and opened."""

from __future__ import annotations

import io
import time
import uuid
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, select

from api import create_app
from captioner.processes import start_worker, stop, wait_ready
from core.archives import pack_dataset
from harness.gate import Gate
from harness.stack import (
    admin_key,
    fresh_postgres,
    moto_s3_server,
    production_settings,
    redis_database,
)
from store.migrate import upgrade
from store.tables import Feedback, Job, StrayBlob
from tests.helpers import OWNER, b64, png, succeeded_job, write_dataset


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """(settings, gate): production-mode settings whose S3 endpoint is a gate before moto;
    every image an object (nothing kept in rows)."""
    with moto_s3_server() as endpoint, Gate(urlsplit(endpoint).port) as gate:
        with fresh_postgres() as url, redis_database() as broker:
            upgrade(url)
            folder = tmp_path_factory.mktemp("blob-outage")
            settings = production_settings(
                folder,
                url,
                broker,
                gate.through(endpoint),
                inline_image_bytes=0,
            )
            yield settings, gate


@pytest.fixture(scope="module")
def app(gated):
    app = create_app(gated[0])
    yield app
    app.extensions["captioner"].db.dispose()


@pytest.fixture
def client(app):
    client = app.test_client()
    key = admin_key(app.extensions["captioner"].db, OWNER)
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client


def rows(app, table) -> int:
    with app.extensions["captioner"].db.session() as session:
        return session.scalar(select(func.count()).select_from(table))


def dataset_archive(folder) -> bytes:
    return pack_dataset(write_dataset(folder), folder.with_suffix(".zip")).read_bytes()


def requests(app, tmp_path) -> dict:
    """Each route that needs the blob store, as (method, path, keyword arguments): made while
    the store is up, so only the outage can refuse them."""
    captioned = succeeded_job(app, attention=b"\x93NUMPY", image=png())  # image in the store
    archive = dataset_archive(tmp_path / "dataset")
    return {
        "submit JSON": ("POST", "/v1/jobs", {"json": {"image": b64(png())}}),
        "submit form": ("POST", "/v1/jobs", {"data": {"image": (io.BytesIO(png()), "a.png")}}),
        "batch": ("POST", "/v1/batches", {"json": {"images": [b64(png())] * 2}}),
        "dataset": ("POST", "/v1/datasets", {"data": archive, "content_type": "application/zip"}),
        "feedback": ("POST", f"/v1/jobs/{captioned}/feedback", {"json": {"caption": "a circle"}}),
        "attention picture": ("GET", f"/v1/jobs/{captioned}/attention.png", {}),
    }


def test_every_route_that_needs_the_store_answers_503_and_records_nothing(
    app, client, gated, tmp_path
):
    _, gate = gated
    calls = requests(app, tmp_path)
    before, strays = (rows(app, Job), rows(app, Feedback)), rows(app, StrayBlob)
    gate.close()
    try:
        for name, (method, path, kwargs) in calls.items():
            answer = client.open(path, method=method, **kwargs)
            assert answer.status_code == 503, (name, answer.get_json())
            assert answer.get_json()["code"] == "blob_store_unavailable", name
            assert int(answer.headers["Retry-After"]) > 0, name
        assert (rows(app, Job), rows(app, Feedback)) == before
        # each refused submission's object is noted (its PUT may have landed): two images and
        # a batch's pack, for the sweeper to delete once the store is back
        assert rows(app, StrayBlob) == strays + 3
    finally:
        gate.open()
    answer = client.post("/v1/jobs", json={"image": b64(png())})
    assert answer.status_code == 202, answer.get_json()  # the same app, once the store is back


def test_deleting_while_the_store_is_away_deletes_the_row(app, client, gated):
    """The row is the record: its blob is left behind, noted as a stray, and the answer is the
    delete's; the sweeper deletes the strays once the store is back."""
    from store.blob_keys import feedback_image_key, image_key
    from store.blobs import open_blob_store
    from store.retention import delete_strays

    settings, gate = gated
    blobs, db = open_blob_store(settings), app.extensions["captioner"].db
    job_id = succeeded_job(app, attention=None, image=png())
    correction = client.post(f"/v1/jobs/{job_id}/feedback", json={"caption": "a red circle"})
    feedback_id = correction.get_json()["id"]
    left = [feedback_image_key(feedback_id), image_key(job_id)]
    gate.close()
    try:
        assert client.delete(f"/v1/feedback/{feedback_id}").status_code == 204
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
        assert delete_strays(db, blobs) == 0  # still away: noted, kept for the next sweep
    finally:
        gate.open()
    assert client.get(f"/v1/feedback/{feedback_id}").status_code == 404
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert all(blobs.exists(key) for key in left)
    assert delete_strays(db, blobs) >= 2  # and those of the refused submissions before
    assert not any(blobs.exists(key) for key in left)


def test_the_gate_cuts_the_store_off_and_lets_it_back(gated):
    """The fault injector itself: closed, the endpoint refuses; opened, the data is still there."""
    from core.errors import BlobStoreError
    from store.blobs import open_blob_store

    settings, gate = gated
    blobs, key = open_blob_store(settings), f"probe/{uuid.uuid4()}"
    blobs.put(key, b"kept")
    gate.close()
    try:
        with pytest.raises(BlobStoreError):
            blobs.get(key)
    finally:
        gate.open()
    assert blobs.get(key) == b"kept"


def job_rows(app, job_ids: list[str]) -> list[tuple[str, int]]:
    """(status, attempts) of each job."""
    ids = [uuid.UUID(job_id) for job_id in job_ids]
    with app.extensions["captioner"].db.session() as session:
        return list(session.execute(select(Job.status, Job.attempts).where(Job.id.in_(ids))))


def test_a_worker_keeps_jobs_queued_through_an_outage_without_spending_attempts(
    app, client, gated, random_bundle_dir, tmp_path
):
    """Jobs whose images are in the store, claimed while it is away for longer than their
    attempts last (2 attempts, 5 s apart), all succeed once it is back; the worker says so
    once at the start of the outage and once at its end, and its heartbeat in between."""
    settings, gate = gated
    batch = client.post("/v1/batches", json={"images": [b64(png((40 + i, 30))) for i in range(4)]})
    job_ids = [job["id"] for job in batch.get_json()["jobs"]]
    worker_settings = settings.with_overrides(
        model_bundle=random_bundle_dir,
        bench_standin_model_ms=5,
        job_max_attempts=2,
    )
    log = tmp_path / "worker.log"
    gate.close()
    worker = start_worker(worker_settings, log, "inference@blob-outage")
    try:
        wait_ready(worker, log)
        until(lambda: "blob store is away" in log.read_text(), 60)
        time.sleep(12)  # past two attempts' worth of retries
        assert all(status == "queued" for status, _ in job_rows(app, job_ids))
        assert all(attempts == 0 for _, attempts in job_rows(app, job_ids))
        until(lambda: away(client) == ["blob store"], 30)
        gate.open()
        until(lambda: all(s == "succeeded" for s, _ in job_rows(app, job_ids)), 90)
        until(lambda: away(client) == [], 30)
    finally:
        stop([worker])
        if not gate.is_open:
            gate.open()
    text = log.read_text()
    assert text.count("blob store is away") == 1 and text.count("blob store is back") == 1


def away(client) -> list[str] | None:
    """What the outage test's worker found away at its last heartbeat (None: not seen yet)."""
    workers = client.get("/v1/workers").get_json()["workers"]
    return next((w["away"] for w in workers if w["worker"].startswith("inference@")), None)


def until(condition, timeout: float) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
