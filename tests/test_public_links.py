"""PUBLIC_URL: links in answers and in webhooks are absolute when it is set, relative paths when
not. The API on real Postgres, Redis and moto S3; a webhook sent by the real sender to a loopback
receiver."""

from __future__ import annotations

import json

import pytest

from api import create_app
from core.errors import SettingsError
from core.settings import from_env
from harness.receiver import receiver
from harness.stack import admin_key
from store.payloads import absolute_urls
from tests.helpers import b64, png
from worker.webhooks import Sender

BASE = "https://captioner.example.com"


def test_absolute_urls_prefix_every_link_once_and_nothing_else():
    job = {"urls": {"self": "/v1/jobs/1"}, "image": {"url": "https://img/a"}}
    body = {"id": "x", "url": "/not-a-link", "urls": {"self": "/v1/batches/x"}, "jobs": [job]}
    made = absolute_urls(body, BASE)
    assert made["urls"] == {"self": f"{BASE}/v1/batches/x"}
    assert made["jobs"][0]["urls"] == {"self": f"{BASE}/v1/jobs/1"}
    assert made["url"] == "/not-a-link" and made["jobs"][0]["image"] == {"url": "https://img/a"}
    assert absolute_urls(made, BASE) == made  # already absolute: left alone
    assert absolute_urls(body, None) is body


@pytest.mark.parametrize(
    ("value", "read"),
    [
        ("https://captioner.example.com/", "https://captioner.example.com"),
        ("http://10.0.0.5:8000/captioner", "http://10.0.0.5:8000/captioner"),
    ],
)
def test_public_url_setting(value, read):
    assert from_env({"PUBLIC_URL": value}).public_url == read
    assert from_env({}).public_url is None


@pytest.mark.parametrize("value", ["captioner.example.com", "ftp://x", "https://x/?q=1"])
def test_a_bad_public_url_fails_at_start_up(value):
    with pytest.raises(SettingsError, match="PUBLIC_URL"):
        from_env({"PUBLIC_URL": value})


@pytest.fixture(scope="module")
def public(settings):
    """The app with PUBLIC_URL set, and a key for it."""
    app = create_app(settings.with_overrides(public_url=BASE))
    yield app, {"Authorization": f"Bearer {admin_key(app.extensions['captioner'].db)}"}
    app.extensions["captioner"].db.dispose()


def test_answers_carry_absolute_links(public, client, queue):
    app, headers = public
    web = app.test_client()
    job = web.post("/v1/jobs", json={"image": b64(png())}, headers=headers)
    assert job.headers["Location"] == f"{BASE}/v1/jobs/{job.get_json()['id']}"
    assert job.get_json()["urls"]["self"] == job.headers["Location"]
    read = web.get(job.headers["Location"].removeprefix(BASE), headers=headers).get_json()
    assert all(link.startswith(f"{BASE}/v1/") for link in read["urls"].values())
    batch = web.post("/v1/batches", json={"images": [b64(png())] * 2}, headers=headers).get_json()
    assert [j["urls"]["self"] for j in batch["jobs"]] == [
        f"{BASE}/v1/jobs/{j['id']}" for j in batch["jobs"]
    ]
    plain = client.post("/v1/jobs", json={"image": b64(png())}).get_json()  # no PUBLIC_URL
    assert plain["urls"]["self"] == f"/v1/jobs/{plain['id']}"


def test_a_webhook_carries_absolute_links(public, queue):
    app, headers = public
    web, services = app.test_client(), app.extensions["captioner"]
    with receiver() as endpoint:
        hook = endpoint.url("/hook")
        job = web.post(
            "/v1/jobs", json={"image": b64(png()), "webhook": hook}, headers=headers
        ).get_json()
        web.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)  # records job.completed
        (delivery,) = web.get(f"/v1/jobs/{job['id']}/deliveries", headers=headers).get_json()[
            "deliveries"
        ]
        Sender(services.settings, services.db, services.broker).deliver(delivery["id"])
        (message,) = endpoint.wait("/hook", 1, timeout=10)
    sent = json.loads(message.body)["data"]
    assert sent["id"] == job["id"] and sent["status"] == "canceled"
    assert sent["urls"]["self"] == f"{BASE}/v1/jobs/{job['id']}"
