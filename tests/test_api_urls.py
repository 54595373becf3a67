"""URLs at submit: `image_url` (jobs), `image_urls` (batches) and `webhook` (jobs, batches,
training runs) pass the SSRF guard or get a 400 saying why; nothing is fetched by the API.

The module's settings allow no private address (the other API tests allow 127.0.0.1)."""

from __future__ import annotations

import io

import pytest

from harness.stack import services
from tests.helpers import BLOCKED, b64, png, queued_ids

SPELLINGS = [url for url, _ in BLOCKED if url.startswith("http://")]
SHAPES = {"type": "shapes", "size": 40, "seed": 1}


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    """Production-mode settings whose guard allows nothing private."""
    with services(tmp_path_factory.mktemp("urls"), url_allow="") as settings:
        yield settings


def refused(response, code: str) -> str:
    assert response.status_code == 400, response.get_json()
    error = response.get_json()
    assert error["code"] == code, error
    return error["detail"]


@pytest.mark.parametrize("url", SPELLINGS)
def test_a_blocked_address_is_refused_at_submit_everywhere(client, queue, url):
    message = refused(client.post("/v1/jobs", json={"image_url": url}), "invalid_image_url")
    assert "image_url refused" in message
    form = {"image_url": url}
    refused(
        client.post("/v1/jobs", data=form, content_type="multipart/form-data"), "invalid_image_url"
    )
    message = refused(
        client.post("/v1/batches", json={"image_urls": ["http://h.test/a", url]}),
        "invalid_image_url",
    )
    assert "image_urls[1] refused" in message
    hook = {"webhook": url}
    refused(client.post("/v1/jobs", json={"image": b64(png())} | hook), "invalid_webhook")
    refused(
        client.post("/v1/jobs", json={"image_url": "http://h.test/a.png"} | hook), "invalid_webhook"
    )
    refused(client.post("/v1/batches", json={"images": [b64(png())]} | hook), "invalid_webhook")
    refused(client.post("/v1/training-runs", json={"dataset": SHAPES} | hook), "invalid_webhook")
    assert queued_ids(queue) == [] and queue.llen("training") == 0


def test_a_name_resolving_to_a_private_address_is_refused_naming_it(app, client):
    services_ = app.extensions["captioner"]
    resolver, services_.resolver = services_.resolver, lambda host, port: ["8.8.8.8", "10.1.2.3"]
    try:
        message = refused(
            client.post("/v1/jobs", json={"image_url": "http://cam.example/a"}), "invalid_image_url"
        )
        assert "private" in message and "10.1.2.3" in message
        refused(
            client.post("/v1/jobs", json={"image": b64(png()), "webhook": "http://cam.example/"}),
            "invalid_webhook",
        )
    finally:
        services_.resolver = resolver


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"image_url": "ftp://h.test/a.png"}, "http"),
        ({"image_url": "http://user:pw@h.test/a.png"}, "password"),
        ({"image_url": 12}, "URL"),
        ({"image_url": "http://h.test/" + "x" * 2100}, "2048"),
        ({"image_url": "http://h.test/a.png", "image": "aGk="}, "not both"),
    ],
)
def test_a_bad_image_url_is_refused(client, body, words):
    assert words in refused(client.post("/v1/jobs", json=body), "invalid_image_url")


def test_a_job_by_url_is_queued_for_the_worker_to_fetch(client, queue):
    response = client.post("/v1/jobs", json={"image_url": "https://h.test/cat.png"})
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["image"]["url"] == "https://h.test/cat.png" and job["image"]["bytes"] == 0
    assert queued_ids(queue) == [job["id"]]
    form = {"image_url": "https://h.test/dog.png"}
    response = client.post("/v1/jobs", data=form, content_type="multipart/form-data")
    assert response.status_code == 202 and response.get_json()["image"]["url"] == form["image_url"]


def test_a_batch_by_urls_is_queued_in_order(client, queue):
    urls = [f"https://h.test/{i}.png" for i in range(3)]
    response = client.post("/v1/batches", json={"image_urls": urls})
    assert response.status_code == 202, response.get_json()
    batch = response.get_json()
    assert [job["image"]["url"] for job in batch["jobs"]] == urls
    both = {"images": [(io.BytesIO(png()), "a.png")], "image_urls": urls[0]}
    refused(
        client.post("/v1/batches", data=both, content_type="multipart/form-data"),
        "invalid_image_url",
    )
    refused(
        client.post("/v1/batches", json={"image_urls": "https://h.test/a.png"}), "invalid_image_url"
    )
    refused(client.post("/v1/batches", json={"image_urls": []}), "empty_batch")
