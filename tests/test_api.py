"""The HTTP API against real Postgres, Redis and an S3 server (moto): submit, read, cancel."""

from __future__ import annotations

import base64
import io
import threading
import time

import pytest

from api import create_app
from harness.stack import admin_key
from tests.helpers import b64, ico, png, queued_ids, stored_image


def test_multipart_upload_is_stored_recorded_and_enqueued(client, app, queue):
    data = png()
    response = client.post(
        "/v1/jobs", data={"image": (io.BytesIO(data), "red.png"), "beam_size": "3"}
    )
    assert response.status_code == 202
    job = response.get_json()
    assert job["status"] == "queued"
    assert job["options"] == {"beam_size": 3, "max_length": 20, "temperature": 0.0, "seed": None}
    assert job["image"] == {"format": "PNG", "width": 64, "height": 48, "bytes": len(data)}
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert queued_ids(queue) == [job["id"]]
    assert stored_image(app, job["id"]) == ("", data)  # small: in its row, no S3 request
    assert client.get(job["urls"]["self"]).get_json()["status"] == "queued"


def test_an_upload_above_the_inline_size_is_its_own_object_in_the_blob_store(settings, queue):
    app = create_app(settings.with_overrides(inline_image_bytes=100))
    data = png((300, 200), (10, 200, 30))  # well over 100 bytes
    try:
        client = app.test_client()
        headers = {"Authorization": f"Bearer {admin_key(app.extensions['captioner'].db)}"}
        response = client.post("/v1/jobs", json={"image": b64(data)}, headers=headers)
        assert response.status_code == 202, response.get_json()
        job_id = response.get_json()["id"]
        assert stored_image(app, job_id) == (f"images/{job_id}", None)
        assert app.extensions["captioner"].blobs.get(f"images/{job_id}") == data
    finally:
        app.extensions["captioner"].db.dispose()


def test_json_base64_upload_is_accepted(client, queue):
    body = {"image": base64.b64encode(png()).decode(), "max_length": 12}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202
    assert response.get_json()["options"]["max_length"] == 12
    assert queued_ids(queue) == [response.get_json()["id"]]


def test_a_sampled_job_takes_one_beam_and_records_its_seed(client):
    image = base64.b64encode(png()).decode()
    chosen = client.post("/v1/jobs", json={"image": image, "temperature": 0.7, "seed": 42})
    assert chosen.status_code == 202
    assert chosen.get_json()["options"] == {
        "beam_size": 1,
        "max_length": 20,
        "temperature": 0.7,
        "seed": 42,
    }
    drawn = client.post(
        "/v1/jobs", data={"image": (io.BytesIO(png()), "x.png"), "temperature": "1.2"}
    ).get_json()
    assert drawn["options"]["temperature"] == 1.2 and drawn["options"]["beam_size"] == 1
    assert 0 <= drawn["options"]["seed"] < 2**32  # a random one, recorded: it can be had again


def test_a_batch_gives_each_image_the_next_seed(client):
    images = [base64.b64encode(png()).decode()] * 3
    batch = client.post("/v1/batches", json={"images": images, "temperature": 1, "seed": 2**32 - 2})
    assert [job["options"]["seed"] for job in batch.get_json()["jobs"]] == [2**32 - 2, 2**32 - 1, 0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": 0.5, "beam_size": 3}, "leave beam_size out or set it to 1"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": "warm"}, "temperature"),
        ({"temperature": "NaN"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"temperature": [1]}, "temperature"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_sampling_options_are_refused_by_name(client, queue, options, message):
    response = client.post("/v1/jobs", json={"image": base64.b64encode(png()).decode(), **options})
    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_option"
    assert message in response.get_json()["detail"]
    assert queued_ids(queue) == []


def test_a_body_cut_short_after_a_good_header_is_taken_the_worker_fails_it(client, queue):
    response = client.post("/v1/jobs", json={"image": b64(png((200, 200))[:300])})
    assert response.status_code == 202  # checked from its header; decoded once, in the worker
    assert queued_ids(queue) == [response.get_json()["id"]]


@pytest.mark.parametrize(
    ("send", "status", "code"),
    [
        ({"data": {"image": (io.BytesIO(b"just text"), "x.png")}}, 415, "not_an_image"),
        ({"data": {"image": (io.BytesIO(ico()), "x.png")}}, 415, "unsupported_format"),
        ({"data": {"image": (io.BytesIO(b""), "x.png")}}, 400, "empty_image"),
        (
            {"data": {"image": (io.BytesIO(b"\x89PNG" + bytes(300_000)), "x.png")}},
            413,
            "image_too_large",
        ),
        ({"data": {"image": (io.BytesIO(png((1200, 1000))), "x.png")}}, 413, "image_too_large"),
        ({"data": {"file": (io.BytesIO(png()), "x.png")}}, 400, "unknown_field"),
        ({"json": {"image": "not base64!"}}, 400, "invalid_base64"),
        ({"json": ["image"]}, 400, "invalid_json"),
        (
            {"json": {"image": base64.b64encode(png()).decode(), "beam_size": 0}},
            400,
            "invalid_option",
        ),
        (
            {"json": {"image": base64.b64encode(png()).decode(), "max_length": "7.5"}},
            400,
            "invalid_option",
        ),
        ({"data": png(), "content_type": "image/png"}, 415, "unsupported_media_type"),
    ],
    ids=[
        "text",
        "unsupported-format",
        "empty",
        "too-many-bytes",
        "too-many-pixels",
        "no-image-field",
        "bad-base64",
        "json-list",
        "beam-0",
        "length-float",
        "raw-body",
    ],
)
def test_bad_uploads_get_a_4xx_and_nothing_is_enqueued(client, queue, send, status, code):
    before = client.get("/v1/jobs?limit=100").get_json()["jobs"]
    response = client.post("/v1/jobs", **send)
    assert response.status_code == status
    assert response.get_json()["code"] == code
    assert response.get_json()["detail"]
    assert queued_ids(queue) == []
    assert client.get("/v1/jobs?limit=100").get_json()["jobs"] == before


def test_cancel_before_start_and_only_once(client, queue):
    job = client.post("/v1/jobs", json={"image": base64.b64encode(png()).decode()}).get_json()
    response = client.post(job["urls"]["cancel"])
    assert response.status_code == 200 and response.get_json()["status"] == "canceled"
    again = client.post(job["urls"]["cancel"])
    assert again.status_code == 409 and again.get_json()["code"] == "not_cancelable"


def test_listing_filters_by_status_and_pages_with_a_cursor(client, queue):
    ids = [
        client.post("/v1/jobs", json={"image": base64.b64encode(png()).decode()}).get_json()["id"]
        for _ in range(3)
    ]
    client.post(f"/v1/jobs/{ids[0]}/cancel")
    first = client.get("/v1/jobs?limit=2").get_json()
    assert [j["id"] for j in first["jobs"]] == ids[:0:-1]  # newest first
    rest = client.get(f"/v1/jobs?limit=2&cursor={first['next_cursor']}").get_json()
    assert rest["jobs"][0]["id"] == ids[0]
    canceled = client.get("/v1/jobs?status=canceled&limit=100").get_json()["jobs"]
    assert ids[0] in {j["id"] for j in canceled}
    assert client.get("/v1/jobs?status=bogus").status_code == 400
    assert client.get("/v1/jobs?cursor=%%%").get_json()["code"] == "invalid_cursor"


def test_prefer_wait_holds_then_answers_202_while_queued(client, queue):
    body = {"image": base64.b64encode(png()).decode()}
    response = client.post("/v1/jobs", json=body, headers={"Prefer": "wait=1"})
    assert response.status_code == 202  # no worker runs in this module
    assert response.headers["Preference-Applied"] == "wait=1"


def test_get_with_prefer_wait_answers_as_soon_as_the_job_ends(app, client, queue):
    job = client.post("/v1/jobs", json={"image": b64(png())}).get_json()
    other = app.test_client()
    other.environ_base.update(client.environ_base)  # the same key
    threading.Timer(0.3, other.post, args=[job["urls"]["cancel"]]).start()
    started = time.monotonic()
    response = client.get(job["urls"]["self"], headers={"Prefer": "wait=10"})
    assert 0.25 < time.monotonic() - started < 5  # held, then woken by the end, not the cap
    assert response.status_code == 200 and response.get_json()["status"] == "canceled"
    assert response.headers["Preference-Applied"] == "wait=10"
    ended = client.get(job["urls"]["self"], headers={"Prefer": "wait=10"})
    assert ended.status_code == 200 and "Preference-Applied" not in ended.headers


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("get", "/v1/jobs/00000000-0000-0000-0000-000000000000", 404),
        ("get", "/v1/jobs/not-a-uuid", 404),
        ("delete", "/v1/jobs", 405),
        ("get", "/nowhere", 404),
    ],
)
def test_errors_are_json(client, method, path, status):
    response = getattr(client, method)(path)
    assert response.status_code == status
    problem = response.get_json()  # RFC 9457
    assert set(problem) == {"type", "title", "status", "detail", "code"}
    assert (problem["status"], problem["type"]) == (status, "about:blank")
    assert response.mimetype == "application/problem+json"


def test_health_and_readiness(client, settings):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json() == {"status": "ready"}
    broken = create_app(
        settings.with_overrides(
            database_url="postgresql+psycopg2://postgres@127.0.0.1:1/nothing",
            broker_url="redis://127.0.0.1:1/0",
            s3_endpoint_url="http://127.0.0.1:1",
        )
    )
    response = broken.test_client().get("/readyz")
    assert response.status_code == 503
    assert set(response.get_json()["failures"]) == {"database", "broker", "blob_store"}
