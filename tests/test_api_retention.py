"""Deleting jobs, batches and datasets, deadlines and the retention sweep, against real Postgres,
Redis and an S3 server (moto); the sweeper runs here as a function, with no worker."""

from __future__ import annotations

import io
import logging
import time
import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import update

from core.archives import pack_dataset
from harness.stack import admin_key
from model.shapes import write_shapes_dataset
from store import jobs
from store.blob_keys import attention_key, attention_png_key
from store.tables import IdempotencyKey, Job, utcnow
from tests.helpers import b64, png
from worker.sweeper import sweep

HOOK = "http://h.test/hook"


@pytest.fixture(scope="module")
def settings(settings):
    """Every upload an object in the blob store: these tests count the blobs a removal leaves
    (an image kept in its job's row goes with the row)."""
    return settings.with_overrides(inline_image_bytes=0)


def svc(app):
    return app.extensions["captioner"]


def submit(client, **body):
    return client.post("/v1/jobs", json={"image": b64(png())} | body).get_json()


def submit_batch(client, count: int = 2, **body):
    return client.post("/v1/batches", json={"images": [b64(png())] * count} | body).get_json()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def succeed(app, job_id: str) -> None:
    """Run the job to success as a worker would, with an old-style attention blob and a cached
    attention picture."""
    job_id, blobs = uuid.UUID(job_id), svc(app).blobs
    done = jobs.JobResult(
        caption="a red square",
        tokens=["a", "red", "square"],
        token_log_probs=[-1.0] * 3,
        model_version="v1",
        attention=None,
        attention_shape=[3, 64],
        predict_ms=1.0,
        batch_size=1,
    )
    with svc(app).db.session() as session:
        claim = jobs.claim_jobs(session, [job_id], 60, 3)
        jobs.finish_jobs(session, claim.token, {job_id: done})
        session.execute(
            update(Job).where(Job.id == job_id).values(attention_key=attention_key(job_id))
        )
    blobs.put(attention_key(job_id), b"npy")
    blobs.put(attention_png_key(job_id), b"png")


def claim(app, *job_ids: str) -> jobs.Claim:
    with svc(app).db.session() as session:
        return jobs.claim_jobs(session, [uuid.UUID(i) for i in job_ids], 60, 3)


def test_deleting_a_queued_or_ended_job_leaves_no_blob_behind(client, app, queue):
    before = svc(app).blobs.list("")
    queued, ended = submit(client), submit(client)
    succeed(app, ended["id"])
    assert len(svc(app).blobs.list("")) == len(before) + 4
    for job in (queued, ended):
        response = client.delete(job["urls"]["self"])
        assert (response.status_code, response.data) == (204, b"")
        assert client.get(job["urls"]["self"]).status_code == 404
    assert svc(app).blobs.list("") == before
    assert client.delete(queued["urls"]["self"]).status_code == 404
    assert claim(app, queued["id"]).jobs == []  # a queued job deleted never runs


def test_a_pack_stays_until_the_last_job_of_the_batch_goes(client, app, queue):
    before = svc(app).blobs.list("")
    batch = submit_batch(client)
    (pack,) = set(svc(app).blobs.list("")) - set(before)
    assert pack.startswith("images/packs/")
    first, second = batch["jobs"]
    assert client.delete(first["urls"]["self"]).status_code == 204
    assert svc(app).blobs.exists(pack)
    assert [j["id"] for j in client.get(batch["urls"]["self"]).get_json()["jobs"]] == [second["id"]]
    assert client.delete(second["urls"]["self"]).status_code == 204
    assert svc(app).blobs.list("") == before
    assert client.get(batch["urls"]["self"]).status_code == 404  # left with no jobs: gone


def test_deleting_a_batch_takes_its_jobs_and_packs(client, app, queue):
    before = svc(app).blobs.list("")
    batch = submit_batch(client, count=3, webhook=HOOK)
    client.post(batch["jobs"][0]["urls"]["cancel"])
    response = client.delete(batch["urls"]["self"])
    assert (response.status_code, response.data) == (204, b"")
    assert client.get(batch["urls"]["self"]).status_code == 404
    assert all(client.get(j["urls"]["self"]).status_code == 404 for j in batch["jobs"])
    assert svc(app).blobs.list("") == before


def test_a_running_job_or_its_batch_cannot_be_deleted(client, app, queue):
    batch = submit_batch(client)
    running, queued = batch["jobs"]
    claim(app, running["id"])
    response = client.delete(running["urls"]["self"])
    error = response.get_json()
    assert (response.status_code, error["code"]) == (409, "job_running")
    assert "running" in error["detail"]
    response = client.delete(batch["urls"]["self"])
    assert (response.status_code, response.get_json()["code"]) == (409, "job_running")
    assert response.get_json()["running"] == [running["id"]]
    assert len(client.get(batch["urls"]["self"]).get_json()["jobs"]) == 2  # nothing deleted
    assert client.delete(queued["urls"]["self"]).status_code == 204  # the queued one may go


def test_another_tenants_job_batch_or_dataset_is_a_404_like_a_missing_one(client, app, queue):
    other = app.test_client()
    other.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin_key(svc(app).db, 'tenant-b')}"
    job, batch = submit(client), submit_batch(client)
    nobody = uuid.uuid4()
    for path, missing in [
        (job["urls"]["self"], f"/v1/jobs/{nobody}"),
        (batch["urls"]["self"], f"/v1/batches/{nobody}"),
    ]:
        theirs, absent = other.delete(path), other.delete(missing)
        assert theirs.status_code == absent.status_code == 404
        assert theirs.get_json()["code"] == absent.get_json()["code"]
        assert client.get(path).status_code == 200  # still there for its owner
    absent = other.delete(f"/v1/datasets/{nobody}")
    assert (absent.status_code, absent.get_json()["code"]) == (404, "dataset_not_found")


@pytest.mark.parametrize(
    ("headers", "body", "seconds"),
    [
        ({"Cancel-After": "30s"}, {}, 30),
        ({"Cancel-After": "1h30m"}, {}, 5400),
        ({"Cancel-After": "90"}, {}, 90),
        ({"Cancel-After": "500ms"}, {}, 0.5),
        ({}, {"deadline_s": 45}, 45),
        ({"Cancel-After": "1h"}, {"deadline_s": 12.5}, 12.5),  # the field wins
        ({}, {}, None),
    ],
)
def test_a_deadline_is_set_from_the_header_or_the_field(client, queue, headers, body, seconds):
    sent = utcnow()
    response = client.post("/v1/jobs", json={"image": b64(png())} | body, headers=headers)
    assert response.status_code == 202
    deadline = response.get_json()["deadline_at"]
    if seconds is None:
        assert deadline is None
    else:
        assert abs((at(deadline) - sent).total_seconds() - seconds) < 5


def test_a_form_field_and_a_batch_set_deadlines_too(client, queue):
    form = {"image": (io.BytesIO(png()), "x.png"), "deadline_s": "60"}
    job = client.post("/v1/jobs", data=form).get_json()
    assert 55 < (at(job["deadline_at"]) - utcnow()).total_seconds() <= 60
    batch = submit_batch(client, count=3, deadline_s=120)
    assert len({j["deadline_at"] for j in batch["jobs"]}) == 1 and batch["jobs"][0]["deadline_at"]


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"Cancel-After": "soon"}, {}),
        ({"Cancel-After": ""}, {}),
        ({"Cancel-After": "0s"}, {}),
        ({"Cancel-After": "-5s"}, {}),
        ({"Cancel-After": "1h30"}, {}),
        ({"Cancel-After": "169h"}, {}),  # over 7 days
        ({"Cancel-After": "5 m"}, {}),
        ({}, {"deadline_s": "ten"}),
        ({}, {"deadline_s": 0}),
        ({}, {"deadline_s": -1}),
        ({}, {"deadline_s": True}),
        ({}, {"deadline_s": [30]}),
        ({}, {"deadline_s": 604801}),
        ({"Cancel-After": "nope"}, {"deadline_s": 30}),  # both are checked
    ],
)
def test_a_malformed_deadline_is_a_400(client, queue, headers, body):
    for path, payload in [
        ("/v1/jobs", {"image": b64(png())}),
        ("/v1/batches", {"images": [b64(png())]}),
    ]:
        response = client.post(path, json=payload | body, headers=headers)
        assert response.status_code == 400
        assert response.get_json()["code"] == "invalid_deadline"
    assert queue.llen("inference") == 0


def test_a_job_nobody_claims_before_its_deadline_is_aborted_by_the_sweep(
    app, client, settings, queue
):
    headers = {"Cancel-After": "1s"}
    late = client.post("/v1/jobs", json={"image": b64(png()), "webhook": HOOK}, headers=headers)
    quiet = client.post("/v1/jobs", json={"image": b64(png())}, headers=headers)
    time.sleep(1.2)
    sweep(settings, svc(app).db, svc(app).broker)
    job = client.get(late.get_json()["urls"]["self"]).get_json()
    assert (job["status"], job["error"]["code"]) == ("aborted", "deadline_passed")
    deliveries = client.get(job["urls"]["deliveries"]).get_json()["deliveries"]
    assert [d["event"] for d in deliveries] == ["job.completed"]
    assert client.get(quiet.get_json()["urls"]["self"]).get_json()["status"] == "aborted"


def test_a_late_job_is_aborted_by_the_claim_too(app, client, queue):
    job = client.post("/v1/jobs", json={"image": b64(png())}, headers={"Cancel-After": "300ms"})
    time.sleep(0.5)
    taken = claim(app, job.get_json()["id"])
    assert (taken.jobs, taken.ended) == ([], [uuid.UUID(job.get_json()["id"])])
    assert client.get(job.get_json()["urls"]["self"]).get_json()["status"] == "aborted"


def test_the_retention_sweep_purges_jobs_that_ended_long_ago(app, client, settings, queue, caplog):
    before = svc(app).blobs.list("")
    old, recent, waiting = submit(client), submit(client), submit(client)
    batch = submit_batch(client, count=2, webhook=HOOK)
    for job in (old, recent, *batch["jobs"]):
        client.post(job["urls"]["cancel"])
    ids = [uuid.UUID(job["id"]) for job in (old, *batch["jobs"])]
    with svc(app).db.session() as session:
        session.execute(
            update(Job).where(Job.id.in_(ids)).values(finished_at=utcnow() - timedelta(days=2))
        )
    with caplog.at_level(logging.INFO, logger="worker.sweeper"):
        sweep(settings.with_overrides(retention_days=1), svc(app).db, svc(app).broker)
    assert "purged 3 jobs" in caplog.text
    for gone in (old, batch):
        assert client.get(gone["urls"]["self"]).status_code == 404
    for kept in (recent, waiting):
        assert client.get(kept["urls"]["self"]).status_code == 200
    left = sorted(f"images/{job['id']}" for job in (recent, waiting))
    assert sorted(set(svc(app).blobs.list("")) - set(before)) == left


def test_the_sweep_forgets_idempotency_keys_after_24_hours(app, settings, queue):
    db = svc(app).db
    with db.session() as session:
        for key, hours in [("old", 25), ("fresh", 1)]:
            session.add(
                IdempotencyKey(
                    tenant="tenant-a",
                    key=key,
                    fingerprint="f" * 64,
                    created_at=utcnow() - timedelta(hours=hours),
                )
            )
    sweep(settings, db, svc(app).broker)
    with db.session() as session:
        assert session.get(IdempotencyKey, ("tenant-a", "old")) is None
        assert session.get(IdempotencyKey, ("tenant-a", "fresh")) is not None


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("tiny-shapes")
    write_shapes_dataset(folder, 6, seed=2, val_fraction=0.5)
    return pack_dataset(folder, folder.with_suffix(".zip")).read_bytes()


def test_a_dataset_goes_once_no_active_run_uses_it(client, app, queue, archive):
    response = client.post("/v1/datasets?name=tiny", data=archive, content_type="application/zip")
    dataset = response.get_json()
    key = f"datasets/{dataset['id']}/archive"
    spec = {"type": "upload", "id": dataset["id"]}
    run = client.post("/v1/training-runs", json={"dataset": spec}).get_json()
    refused = client.delete(dataset["urls"]["self"])
    assert (refused.status_code, refused.get_json()["code"]) == (409, "dataset_in_use")
    assert refused.get_json()["training_runs"] == [run["id"]]
    assert client.post(run["urls"]["cancel"]).status_code == 200
    assert client.delete(dataset["urls"]["self"]).status_code == 204
    assert client.get(dataset["urls"]["self"]).status_code == 404
    assert not svc(app).blobs.exists(key)
    assert client.get(run["urls"]["self"]).get_json()["dataset"] == spec | {"name": "tiny"}
    assert client.delete(dataset["urls"]["self"]).status_code == 404
