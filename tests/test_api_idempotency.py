"""`Idempotency-Key` on the create POSTs, against real Postgres, Redis and moto S3 (and, for the
race, a real threaded HTTP server): replay, reuse, in-use, per tenant, 5xx forgotten."""

from __future__ import annotations

import io
import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta

import pytest
from PIL import Image
from sqlalchemy import func, select
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from api import create_app
from api.idempotency import BodyDigest
from api.services import Services
from captioner.processes import api_server
from core.archives import pack_dataset
from harness.stack import admin_key
from model.shapes import write_shapes_dataset
from store import idempotency
from store.blobs import LocalBlobStore
from store.idempotency import Answer, Outcome
from store.tables import ApiKey, IdempotencyKey, Job, utcnow
from tests.helpers import b64, ico, png, queued_ids, stored_image

REPLAYED = "Idempotent-Replayed"


def post(client, path: str, key: str, **kwargs):
    """POST with an `Idempotency-Key`."""
    return client.post(path, headers={"Idempotency-Key": key} | kwargs.pop("headers", {}), **kwargs)


def new_key() -> str:
    return f"key-{uuid.uuid4()}"


def db(app):
    return app.extensions["captioner"].db


def count(app, model, *where) -> int:
    with db(app).session() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where))


def stored_row(app, tenant: str, key: str) -> IdempotencyKey | None:
    with db(app).session() as session:
        return session.get(IdempotencyKey, (tenant, key))


def client_for(app, tenant: str):
    """A test client with a fresh all-scopes key of `tenant`."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin_key(db(app), tenant)}"
    return client


def noise_png(side: int = 250) -> bytes:
    """A PNG of random pixels (~190 kB: it does not compress)."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def upload(data: bytes, name: str) -> FileStorage:
    """A file for `multipart`."""
    return FileStorage(io.BytesIO(data), filename=name)


def multipart(fields: dict, boundary: str) -> dict:
    """Keyword arguments posting `fields` as multipart/form-data with this `boundary`."""
    _, body = encode_multipart(fields, boundary=boundary)
    return {"data": body, "content_type": f"multipart/form-data; boundary={boundary}"}


def test_the_same_job_request_is_answered_again_and_creates_one_job(client, app, queue):
    key, body = new_key(), {"image": b64(png()), "max_length": 9}
    first = post(client, "/v1/jobs", key, json=body)
    assert first.status_code == 202 and REPLAYED not in first.headers
    again = post(client, "/v1/jobs", key, json=body)
    assert again.status_code == 202
    assert again.headers[REPLAYED] == "true"
    assert again.get_data() == first.get_data()
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Content-Type"] == "application/json"
    job_id = first.get_json()["id"]
    assert queued_ids(queue) == [job_id]
    assert count(app, Job, Job.id == uuid.UUID(job_id)) == 1
    row = stored_row(app, "tenant-a", key)
    assert (row.status_code, row.headers["Location"]) == (202, f"/v1/jobs/{job_id}")


def test_without_a_key_every_post_creates(client, queue):
    body = {"image": b64(png())}
    ids = {client.post("/v1/jobs", json=body).get_json()["id"] for _ in range(2)}
    assert len(ids) == 2


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/jobs", {"image": b64(png()), "max_length": 10}),  # another body
        ("/v1/batches", {"images": [b64(png())]}),  # another path
        ("/v1/jobs?x=1", {"image": b64(png())}),  # another query
    ],
)
def test_the_key_with_another_request_is_a_422(client, path, body):
    key = new_key()
    assert post(client, "/v1/jobs", key, json={"image": b64(png())}).status_code == 202
    response = post(client, path, key, json=body)
    assert response.status_code == 422
    assert response.get_json()["code"] == "idempotency_key_reused"
    assert REPLAYED not in response.headers


@pytest.mark.parametrize(("key", "status"), [("k" * 255, 202), ("k" * 256, 400), ("", 400)])
def test_a_key_is_1_to_255_characters(client, key, status):
    key = key and key[:-8] + uuid.uuid4().hex[:8]  # unique per run, same length
    response = post(client, "/v1/jobs", key, json={"image": b64(png())})
    assert response.status_code == status
    if status == 400:
        assert response.get_json()["code"] == "invalid_idempotency_key"


def test_keys_are_per_tenant(client, app):
    other = client_for(app, "tenant-b")
    key, body = new_key(), {"image": b64(png())}
    mine = post(client, "/v1/jobs", key, json=body)
    theirs = post(other, "/v1/jobs", key, json=body)
    assert mine.status_code == theirs.status_code == 202
    assert REPLAYED not in theirs.headers
    assert mine.get_json()["id"] != theirs.get_json()["id"]
    assert post(other, "/v1/jobs", key, json=body).get_json()["id"] == theirs.get_json()["id"]
    assert (
        stored_row(app, "tenant-b", key).fingerprint == stored_row(app, "tenant-a", key).fingerprint
    )


def test_a_retry_while_the_first_runs_is_a_409_then_a_replay(app, client):
    """`Prefer: wait=2` holds the first request (no worker runs the job) with its key claimed."""
    key, body, answers = new_key(), {"image": b64(png())}, []
    first_client = client_for(app, "tenant-a")
    waiting = threading.Thread(
        target=lambda: answers.append(
            post(first_client, "/v1/jobs", key, json=body, headers={"Prefer": "wait=2"})
        )
    )
    waiting.start()
    deadline = time.monotonic() + 10
    while stored_row(app, "tenant-a", key) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    busy = post(client, "/v1/jobs", key, json=body)
    assert busy.status_code == 409
    assert busy.headers["Retry-After"] == "1"
    assert busy.get_json()["code"] == "idempotency_key_in_use"
    assert post(client, "/v1/jobs", key, json={"image": b64(png((8, 8)))}).status_code == 422
    waiting.join()
    assert answers[0].status_code == 202 and answers[0].headers["Preference-Applied"] == "wait=2"
    replayed = post(client, "/v1/jobs", key, json=body)
    assert replayed.headers[REPLAYED] == "true"
    assert replayed.get_json()["id"] == answers[0].get_json()["id"]
    assert "Preference-Applied" not in replayed.headers  # only Location and Content-Type


def test_a_multipart_retry_with_a_new_boundary_is_a_replay(client, app, queue):
    key, data = new_key(), png((30, 20))
    fields = {"image": upload(data, "red.png"), "beam_size": "2"}
    first = post(client, "/v1/jobs", key, **multipart(fields, "boundary-one"))
    assert first.status_code == 202, first.get_json()
    job = first.get_json()
    assert job["image"] == {"format": "PNG", "width": 30, "height": 20, "bytes": len(data)}
    assert job["options"]["beam_size"] == 2
    assert stored_image(app, job["id"]) == ("", data)
    fields["image"] = upload(data, "red.png")
    again = post(client, "/v1/jobs", key, **multipart(fields, "another-boundary-2"))
    assert again.headers[REPLAYED] == "true" and again.get_json()["id"] == job["id"]
    fields["image"], fields["beam_size"] = upload(data, "red.png"), "3"
    assert post(client, "/v1/jobs", key, **multipart(fields, "b3")).status_code == 422


def test_a_large_multipart_batch_is_read_whole_and_replayed(client, app):
    images = [noise_png() for _ in range(8)]  # over a MiB: the body goes to a temporary file
    key = new_key()
    fields = {"images": [upload(image, f"{i}.png") for i, image in enumerate(images)]}
    first = post(client, "/v1/batches", key, **multipart(fields, "first"))
    assert first.status_code == 202, first.get_json()
    batch = first.get_json()
    assert [job["image"]["bytes"] for job in batch["jobs"]] == [len(i) for i in images]
    fields = {"images": [upload(image, f"{i}.png") for i, image in enumerate(images)]}
    again = post(client, "/v1/batches", key, **multipart(fields, "second"))
    assert again.headers[REPLAYED] == "true" and again.get_json()["id"] == batch["id"]


def test_a_4xx_is_recorded_and_replayed(client):
    key = new_key()
    first = post(client, "/v1/jobs", key, json={"image": b64(ico())})
    assert first.status_code == 415 and REPLAYED not in first.headers
    again = post(client, "/v1/jobs", key, json={"image": b64(ico())})
    assert again.status_code == 415 and again.headers[REPLAYED] == "true"
    assert again.get_json() == first.get_json()


def test_a_5xx_is_forgotten_so_a_retry_runs_again(app, settings, client, api_key, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")  # images cannot be written under a file
    every_image_a_blob = settings.with_overrides(inline_image_bytes=0)
    broken = replace(
        Services.from_settings(every_image_a_blob), blobs=LocalBlobStore(blocker / "blobs")
    )
    failing = create_app(services=broken).test_client()
    failing.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api_key}"
    key, body = new_key(), {"image": b64(png())}
    response = post(failing, "/v1/jobs", key, json=body)
    assert response.status_code == 503  # blob_store_unavailable: a 5xx, not kept for the key
    assert stored_row(app, "tenant-a", key) is None
    retried = post(client, "/v1/jobs", key, json=body)
    assert retried.status_code == 202 and REPLAYED not in retried.headers
    broken.db.dispose()


def test_a_key_on_a_post_that_creates_nothing_is_ignored(client):
    job = client.post("/v1/jobs", json={"image": b64(png())}).get_json()
    key = new_key()
    assert post(client, f"/v1/jobs/{job['id']}/cancel", key).status_code == 200
    again = post(client, f"/v1/jobs/{job['id']}/cancel", key)
    assert again.status_code == 409 and REPLAYED not in again.headers  # ran again


def test_keys_and_training_runs_are_created_once(client, app, queue):
    key = new_key()
    body = {"tenant": "tenant-made", "scopes": ["jobs"], "name": "once"}
    made = [post(client, "/v1/keys", key, json=body) for _ in range(2)]
    assert [m.status_code for m in made] == [201, 201] and made[1].headers[REPLAYED] == "true"
    assert made[0].get_json() == made[1].get_json()
    assert count(app, ApiKey, ApiKey.tenant == "tenant-made") == 1
    run = {"dataset": {"type": "shapes", "size": 40, "seed": 1}}
    assert post(client, "/v1/training-runs", key, json=run).status_code == 422  # the keys POST's
    runs = [post(client, "/v1/training-runs", "run-" + key, json=run) for _ in range(2)]
    assert [r.status_code for r in runs] == [201, 201] and runs[1].headers[REPLAYED] == "true"
    assert runs[0].get_json()["id"] == runs[1].get_json()["id"]
    assert queue.llen("training") == 1


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("tiny-shapes")
    write_shapes_dataset(folder, 6, seed=2, val_fraction=0.5)
    return pack_dataset(folder, folder.with_suffix(".zip")).read_bytes()


def test_a_raw_dataset_upload_reaches_its_view_whole_and_is_replayed(client, app, archive):
    key = new_key()
    first = post(
        client, "/v1/datasets?name=tiny", key, data=archive, content_type="application/zip"
    )
    assert first.status_code == 201, first.get_json()
    dataset = first.get_json()
    assert app.extensions["captioner"].blobs.get(f"datasets/{dataset['id']}/archive") == archive
    again = post(
        client, "/v1/datasets?name=tiny", key, data=archive, content_type="application/zip"
    )
    assert again.headers[REPLAYED] == "true" and again.get_json()["id"] == dataset["id"]
    renamed = post(
        client, "/v1/datasets?name=other", key, data=archive, content_type="application/zip"
    )
    assert renamed.status_code == 422


def test_a_multipart_dataset_upload_still_parses(client, archive):
    fields = {"archive": upload(archive, "tiny.zip"), "name": "parts"}
    response = post(client, "/v1/datasets", new_key(), **multipart(fields, "dataset-boundary"))
    assert response.status_code == 201, response.get_json()
    assert (response.get_json()["name"], response.get_json()["images"]) == ("parts", 6)


def test_an_abandoned_claim_is_taken_over(client, app):
    key, body = new_key(), {"image": b64(png())}
    with db(app).session() as session:
        idempotency.begin(session, "tenant-a", key, "other", now=utcnow() - timedelta(minutes=6))
    response = post(client, "/v1/jobs", key, json=body)
    assert response.status_code == 202 and REPLAYED not in response.headers
    with db(app).session() as session:
        young = idempotency.begin(
            session, "tenant-a", new_key(), "f", now=utcnow() - timedelta(minutes=4)
        )
        assert young.outcome is Outcome.STARTED


def test_an_expired_key_is_used_afresh(client, app):
    key, long_ago = new_key(), utcnow() - timedelta(hours=25)
    with db(app).session() as session:
        claim = idempotency.begin(session, "tenant-a", key, "an old request", now=long_ago)
        assert idempotency.finish(session, "tenant-a", key, claim.started_at, Answer(201))
    response = post(client, "/v1/jobs", key, json={"image": b64(png())})
    assert response.status_code == 202 and REPLAYED not in response.headers
    assert stored_row(app, "tenant-a", key).created_at > long_ago + timedelta(hours=24)


def test_a_claim_taken_over_cannot_be_finished_or_forgotten_by_its_first_owner(app):
    key, store = new_key(), idempotency
    with db(app).session() as session:
        old = store.begin(session, "t-store", key, "f", now=utcnow() - timedelta(minutes=6))
        new = store.begin(session, "t-store", key, "f")
        assert new.outcome is Outcome.STARTED and new.started_at != old.started_at
        assert not store.finish(session, "t-store", key, old.started_at, Answer(201, {}, b"x"))
        assert not store.forget(session, "t-store", key, old.started_at)
        assert store.begin(session, "t-store", key, "f").outcome is Outcome.IN_USE
        assert store.begin(session, "t-store", key, "g").outcome is Outcome.REUSED
        assert store.finish(session, "t-store", key, new.started_at, Answer(201, {"A": "b"}, b"y"))
        replay = store.begin(session, "t-store", key, "f")
    assert (replay.outcome, replay.answer) == (Outcome.REPLAY, Answer(201, {"A": "b"}, b"y"))


def test_purge_expired_deletes_only_old_keys(app):
    now = utcnow()
    ages = {"fresh": timedelta(hours=1), "old": timedelta(hours=25), "older": timedelta(days=3)}
    with db(app).session() as session:
        for name, age in ages.items():
            idempotency.begin(session, "t-purge", name, "f", now=now - age)
    with db(app).session() as session:
        assert idempotency.purge_expired(session, timedelta(hours=24)) == 2
        left = session.scalars(select(IdempotencyKey.key).where(IdempotencyKey.tenant == "t-purge"))
        assert list(left) == ["fresh"]
        assert idempotency.purge_expired(session, now - timedelta(minutes=30)) == 1  # "fresh"


def test_a_digest_leaves_out_the_boundary_however_the_body_is_cut():
    body = b"--XYZ\r\nhello XY\r\n--XYZ\r\nZ world\r\n--XYZ--\r\n"
    same = body.replace(b"XYZ", b"Q")
    whole = BodyDigest(b"head", b"Q")
    whole.update(same)
    for size in (1, 2, 3, 5, 7, len(body)):
        cut = BodyDigest(b"head", b"XYZ")
        for start in range(0, len(body), size):
            cut.update(body[start : start + size])
        assert cut.hexdigest() == whole.hexdigest()


def send(url: str, key: str, api_key: str, body: bytes) -> tuple[int, dict]:
    """POST a job over HTTP; the status and JSON body, errors included."""
    request = urllib.request.Request(
        f"{url}/v1/jobs",
        data=body,
        method="POST",
        headers={
            "Authorization": f"Bearer {api_key}",
            "Idempotency-Key": key,
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_50_concurrent_requests_with_one_key_create_one_job(settings, app):
    api_key, key = admin_key(db(app), "tenant-race"), new_key()
    body = json.dumps({"image": b64(png())}).encode()
    start = threading.Barrier(50)

    def one(_) -> tuple[int, dict]:
        start.wait()
        return send(url, key, api_key, body)

    with api_server(settings) as url, ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(one, range(50)))
    created = {answer["id"] for status, answer in answers if status == 202}
    assert {status for status, _ in answers} <= {202, 409}
    assert len(created) == 1
    assert all(a["code"] == "idempotency_key_in_use" for s, a in answers if s == 409)
    assert count(app, Job, Job.owner == "tenant-race") == 1
