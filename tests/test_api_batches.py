"""/v1/batches against real Postgres, Redis and moto S3: all-or-nothing submit, then progress."""

from __future__ import annotations

import io
import logging
import uuid
from dataclasses import replace

import pytest
from sqlalchemy import func, select

from api import create_app
from api.services import Services
from core.broker import Broker
from harness.stack import admin_key
from store import batches, jobs
from store.images import read_images
from store.tables import Batch, Job
from tests.helpers import b64, ico, png, queued_ids, queued_messages


def recorded(app) -> tuple[int, int, int]:
    """How many batch rows, job rows and image blobs exist."""
    svc = app.extensions["captioner"]
    with svc.db.session() as session:
        batch_rows = session.scalar(select(func.count()).select_from(Batch))
        job_rows = session.scalar(select(func.count()).select_from(Job))
    return batch_rows, job_rows, len(svc.blobs.list("images/"))


def test_multipart_batch_records_every_job_in_order_and_enqueues_them(client, app, queue):
    images = [png((64, 48)), png((32, 32)), png((20, 10))]
    files = [(io.BytesIO(data), f"{i}.png") for i, data in enumerate(images)]
    response = client.post("/v1/batches", data={"images": files, "beam_size": "2"})
    assert response.status_code == 202
    batch = response.get_json()
    assert response.headers["Location"] == batch["urls"]["self"] == f"/v1/batches/{batch['id']}"
    assert batch["size"] == 3 and batch["status"] == "running" and batch["finished_at"] is None
    assert batch["counts"] == {
        "queued": 3,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "canceled": 0,
        "aborted": 0,
    }
    assert [job["image"]["width"] for job in batch["jobs"]] == [64, 32, 20]
    ids = [job["id"] for job in batch["jobs"]]
    assert queued_messages(queue) == [ids]  # one message for the worker's one batch
    for job in batch["jobs"]:
        assert job["batch_id"] == batch["id"] and job["urls"]["batch"] == batch["urls"]["self"]
        assert job["options"] == {
            "beam_size": 2,
            "max_length": 20,
            "temperature": 0.0,
            "seed": None,
        }
        assert client.get(job["urls"]["self"]).get_json()["batch_id"] == batch["id"]
    assert stored_images(app, ids) == images
    assert len(image_keys(app, ids)) == 1  # in one pack
    again = client.get(batch["urls"]["self"]).get_json()
    assert [job["id"] for job in again["jobs"]] == ids


def stored_images(app, ids: list[str]) -> list[bytes]:
    """The jobs' image bytes as a worker reads them from the blob store."""
    svc = app.extensions["captioner"]
    with svc.db.session() as session:
        rows = [session.get(Job, uuid.UUID(job_id)) for job_id in ids]
    found = read_images(svc.blobs, rows)
    return [found[row.id] for row in rows]


def image_keys(app, ids: list[str]) -> set[str]:
    """The blob keys the jobs' images lie under."""
    with app.extensions["captioner"].db.session() as session:
        return {session.get(Job, uuid.UUID(job_id)).image_key for job_id in ids}


def test_a_large_batch_is_stored_and_sent_a_worker_batch_at_a_time(client, app, queue, settings):
    images = [png((10 + i, 10)) for i in range(settings.batch_max_size + 3)]
    response = client.post("/v1/batches", json={"images": [b64(data) for data in images]})
    assert response.status_code == 202
    ids = [job["id"] for job in response.get_json()["jobs"]]
    chunk = settings.batch_max_size
    assert queued_messages(queue) == [ids[:chunk], ids[chunk:]]
    assert stored_images(app, ids) == images
    assert len(image_keys(app, ids)) == 2


def test_json_batch_takes_base64_and_data_urls(client, queue):
    images = [b64(png()), "data:image/png;base64," + b64(png((10, 12)))]
    response = client.post("/v1/batches", json={"images": images, "max_length": 5})
    assert response.status_code == 202
    batch = response.get_json()
    assert [job["image"]["height"] for job in batch["jobs"]] == [48, 12]
    assert {job["options"]["max_length"] for job in batch["jobs"]} == {5}
    assert queued_ids(queue) == [job["id"] for job in batch["jobs"]]


def files(*images: bytes) -> list:
    """Multipart file entries for the images, in order."""
    return [(io.BytesIO(data), f"{i}.png") for i, data in enumerate(images)]


GOOD = png()
TEXT = b"just text"
ICO = ico()
HUGE = png((1200, 1000))


@pytest.mark.parametrize(
    ("send", "status", "code", "names"),
    [
        ({"data": {"images": files(GOOD, TEXT, GOOD)}}, 415, "not_an_image", "images[1]"),
        (
            {"json": {"images": [b64(GOOD), b64(GOOD), b64(ICO)]}},
            415,
            "unsupported_format",
            "images[2]",
        ),
        (
            {"json": {"images": [b64(GOOD), b64(HUGE), b64(GOOD)]}},
            413,
            "image_too_large",
            "images[1]",
        ),
        ({"data": {"images": files(GOOD, b"", GOOD)}}, 400, "empty_image", "images[1]"),
        (
            {"json": {"images": [b64(GOOD), "not base64!", b64(GOOD)]}},
            400,
            "invalid_base64",
            "images[1]",
        ),
        ({"json": {"images": [b64(GOOD), 7]}}, 400, "missing_image", "images[1]"),
        ({"json": {"images": []}}, 400, "empty_batch", "images"),
        ({"json": {}}, 400, "empty_batch", "images"),
        (
            {"data": {"beam_size": "2"}, "content_type": "multipart/form-data"},
            400,
            "empty_batch",
            "images",
        ),
        ({"data": {"image": files(GOOD)}}, 400, "unknown_field", "images"),
        ({"json": {"images": [b64(GOOD)] * 101}}, 400, "batch_too_large", "101"),
        ({"data": {"images": files(*[GOOD] * 101)}}, 400, "batch_too_large", "101"),
        ({"json": {"images": b64(GOOD)}}, 400, "invalid_images", "list"),
        ({"json": {"images": [b64(GOOD)], "beam_size": 0}}, 400, "invalid_option", "beam_size"),
        ({"json": [b64(GOOD)]}, 400, "invalid_json", "object"),
        ({"data": GOOD, "content_type": "image/png"}, 415, "unsupported_media_type", "images"),
    ],
    ids=[
        "text-in-middle",
        "unsupported-last",
        "too-many-pixels",
        "empty-file",
        "bad-base64",
        "not-a-string",
        "empty-list",
        "no-images-key",
        "no-files",
        "singular-field",
        "json-101",
        "multipart-101",
        "not-a-list",
        "beam-0",
        "json-list",
        "raw-body",
    ],
)
def test_a_bad_batch_is_refused_whole(client, app, queue, send, status, code, names):
    before = recorded(app)
    response = client.post("/v1/batches", **send)
    assert response.status_code == status
    error = response.get_json()
    assert error["code"] == code and names in error["detail"]
    assert queued_ids(queue) == []
    assert recorded(app) == before


def test_summary_counts_follow_the_jobs_until_all_are_terminal(client, queue):
    body = {"images": [b64(png()) for _ in range(3)]}
    batch = client.post("/v1/batches", json=body).get_json()
    first, *rest = [job["urls"]["cancel"] for job in batch["jobs"]]
    assert client.post(first).status_code == 200
    summary = client.get(batch["urls"]["self"]).get_json()
    assert summary["status"] == "running" and summary["finished_at"] is None
    assert (summary["counts"]["queued"], summary["counts"]["canceled"]) == (2, 1)
    for url in rest:
        client.post(url)
    summary = client.get(batch["urls"]["self"]).get_json()
    assert summary["status"] == "completed" and summary["counts"]["canceled"] == 3
    assert sum(summary["counts"].values()) == summary["size"] == 3
    finished = [job["timings"]["finished_at"] for job in summary["jobs"]]
    assert summary["finished_at"] == max(finished)
    assert summary["created_at"] == batch["created_at"]


@pytest.mark.parametrize("path", [f"/v1/batches/{uuid.uuid4()}", "/v1/batches/not-a-uuid"])
def test_unknown_batch_is_404(client, path):
    response = client.get(path)
    assert response.status_code == 404
    expected = "batch_not_found" if "not-a-uuid" not in path else "not_found"
    assert response.get_json()["code"] == expected


def test_store_keeps_submission_order_even_against_id_order(app):
    db = app.extensions["captioner"].db
    ids = [uuid.UUID(int=n) for n in (5, 4, 3, 2, 1)]  # ascending ids would be the reverse order
    new = [
        jobs.NewJob(
            owner="tenant",
            image_key=f"images/{i}",
            image_bytes=1,
            image_format="PNG",
            image_width=1,
            image_height=1,
            id=i,
        )
        for i in ids
    ]
    with db.session() as session:
        batch_id = batches.create_batch(session, "tenant", new)[0].id
    with db.session() as session:
        assert [job.id for job in jobs.batch_jobs(session, batch_id)] == ids
        assert batches.get_batch(session, batch_id, owner="someone else") is None
        assert batches.get_batch(session, batch_id, owner="tenant").size == 5
    with pytest.raises(ValueError, match="owner"), db.session() as session:
        batches.create_batch(session, "someone else", new[:1])


class FlakyCelery:
    """Takes `accept` tasks, then refuses: a broker that went away mid-batch."""

    def __init__(self, accept: int) -> None:
        self.accept, self.sent = accept, []

    def send_task(self, name: str, args: list, queue: str, countdown=None) -> None:
        if len(self.sent) == self.accept:
            raise ConnectionError("broker gone")
        self.sent.append(args[0])


def test_ids_the_broker_refused_stay_unsent_for_the_sweeper(settings):
    broker = FlakyCelery(accept=2)
    small = settings.with_overrides(batch_max_size=2)  # a message per two jobs
    services = replace(Services.from_settings(small), broker=Broker(broker, logging.getLogger()))
    services.blobs.ensure_bucket()
    client = create_app(services=services).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin_key(services.db)}"
    batch = client.post("/v1/batches", json={"images": [b64(png())] * 6}).get_json()
    ids = [uuid.UUID(job["id"]) for job in batch["jobs"]]
    assert batch["counts"]["queued"] == 6
    assert broker.sent == [[str(i) for i in ids[:2]], [str(i) for i in ids[2:4]]]
    with services.db.session() as session:
        sent = [jobs.get_job(session, job_id).enqueued_at is not None for job_id in ids]
    assert sent == [True, True, True, True, False, False]
    services.db.dispose()
