"""The API's webhook surface: options on jobs and batches, the secret, delivery logs, replay."""

from __future__ import annotations

import base64
import io
import json
import uuid

import pytest
from sqlalchemy import select

from store.tables import Delivery
from tests.helpers import b64, png


def test_a_job_keeps_its_webhook_and_events(client, queue):
    body = {
        "image": b64(png()),
        "webhook": "https://example.com/hook",
        "webhook_events": ["completed", "start"],
    }
    job = client.post("/v1/jobs", json=body).get_json()
    assert job["webhook"] == {"url": "https://example.com/hook", "events": ["start", "completed"]}
    assert client.get(job["urls"]["self"]).get_json()["webhook"] == job["webhook"]


def test_completed_is_the_default_event_and_forms_may_list_events(client, queue):
    plain = client.post("/v1/jobs", json={"image": b64(png()), "webhook": "http://h.test/x"})
    assert plain.get_json()["webhook"]["events"] == ["completed"]
    form = {
        "image": (io.BytesIO(png()), "a.png"),
        "webhook": "http://h.test/x",
        "webhook_events": "start,completed",
    }
    assert client.post("/v1/jobs", data=form).get_json()["webhook"]["events"] == [
        "start",
        "completed",
    ]
    assert client.post("/v1/jobs", json={"image": b64(png())}).get_json()["webhook"] is None


@pytest.mark.parametrize(
    ("options", "code"),
    [
        ({"webhook": "ftp://example.com/hook"}, "invalid_webhook"),
        ({"webhook": "not a url"}, "invalid_webhook"),
        ({"webhook": "https:///no-host"}, "invalid_webhook"),
        ({"webhook": 42}, "invalid_webhook"),
        ({"webhook": "https://example.com/" + "x" * 2100}, "invalid_webhook"),
        ({"webhook_events": ["completed"]}, "invalid_webhook"),
        (
            {"webhook": "https://example.com/h", "webhook_events": ["finished"]},
            "invalid_webhook_events",
        ),
        ({"webhook": "https://example.com/h", "webhook_events": [1]}, "invalid_webhook_events"),
        (
            {"webhook": "https://example.com/h", "webhook_events": {"start": True}},
            "invalid_webhook_events",
        ),
    ],
)
def test_a_bad_webhook_is_a_400_and_nothing_is_recorded(client, queue, options, code):
    response = client.post("/v1/jobs", json={"image": b64(png()), **options})
    assert response.status_code == 400
    assert response.get_json()["code"] == code
    assert queue.llen("inference") == 0


def test_a_batch_carries_one_webhook_for_the_batch(client, queue):
    body = {
        "images": [b64(png()), b64(png())],
        "webhook": "https://example.com/batch",
        "webhook_events": "start",
    }
    batch = client.post("/v1/batches", json=body).get_json()
    assert batch["webhook"] == {"url": "https://example.com/batch", "events": ["start"]}
    assert all(job["webhook"] is None for job in batch["jobs"])
    assert client.get(batch["urls"]["deliveries"]).get_json() == {"deliveries": []}


def test_canceling_records_a_completed_delivery_once(client, app, queue):
    job = client.post(
        "/v1/jobs", json={"image": b64(png()), "webhook": "https://example.com/c"}
    ).get_json()
    assert client.post(job["urls"]["cancel"]).status_code == 200
    assert client.post(job["urls"]["cancel"]).status_code == 409
    (delivery,) = client.get(job["urls"]["deliveries"]).get_json()["deliveries"]
    assert delivery["event"] == "job.completed" and delivery["status"] in ("pending", "sending")
    assert delivery["webhook_id"] == "msg_" + uuid.UUID(delivery["id"]).hex
    assert delivery["url"] == "https://example.com/c"
    assert queue.llen("webhooks") == 1  # sent to the webhook workers once committed
    with app.extensions["captioner"].db.session() as session:
        row = session.scalar(select(Delivery).where(Delivery.id == uuid.UUID(delivery["id"])))
        assert json.loads(row.body)["data"]["status"] == "canceled"


def test_the_secret_is_shown_and_rotation_keeps_the_old_one_for_the_grace(client):
    first = client.get("/v1/webhooks/secret").get_json()
    assert first["secret"].startswith("whsec_")
    assert 24 <= len(base64.b64decode(first["secret"].removeprefix("whsec_"))) <= 64
    assert client.get("/v1/webhooks/secret").get_json()["secret"] == first["secret"]
    rotated = client.post("/v1/webhooks/secret/rotate", json={"grace_seconds": 3600}).get_json()
    assert rotated["secret"] != first["secret"]
    assert [p["secret"] for p in rotated["previous"]] == [first["secret"]]
    now = client.post("/v1/webhooks/secret/rotate", json={"grace_seconds": 0}).get_json()
    assert [p["secret"] for p in now["previous"]] == [first["secret"]]  # the 0 s one is gone
    assert client.get("/v1/webhooks/secret").get_json() == now


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"grace_seconds": -1}, "invalid_grace"),
        ({"grace_seconds": "1h"}, "invalid_grace"),
        ({"grace_seconds": 10**9}, "invalid_grace"),
        (["x"], "invalid_json"),
        ({"grace_secnds": 60}, "unknown_field"),  # a typo does not rotate with the default
    ],
)
def test_a_bad_grace_period_is_a_400(client, body, code):
    before = client.get("/v1/webhooks/secret").get_json()
    response = client.post("/v1/webhooks/secret/rotate", json=body)
    assert (response.status_code, response.get_json()["code"]) == (400, code)
    assert client.get("/v1/webhooks/secret").get_json() == before  # nothing rotated


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs/{id}/deliveries",
        "/v1/batches/{id}/deliveries",
        "/v1/deliveries/{id}",
    ],
)
def test_unknown_ids_are_404s(client, path):
    response = client.get(path.format(id=uuid.uuid4()))
    assert response.status_code == 404 and response.get_json()["code"].endswith("_not_found")
    assert client.post(f"/v1/deliveries/{uuid.uuid4()}/replay").status_code == 404
