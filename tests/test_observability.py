"""Metrics and logs as production runs them: the Dockerfile's gunicorn command (4 processes
sharing prometheus-client's multiprocess directory, /metrics on a port of its own and not on the
public one) and a real inference worker with its own metrics port, JSON logs and a ready file;
the stand-in model answers."""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from captioner.processes import start_worker, stop, wait_ready
from harness.http import free_port
from harness.stack import admin_key, production_api, services
from store.db import Database
from tests.helpers import png

BATCH = 6


@pytest.fixture(scope="module")
def bundle(random_bundle, tmp_path_factory) -> Path:
    """The untrained bundle on disk: the stand-in model answers, the bundle is only loaded."""
    from model.bundle import save_bundle

    return save_bundle(random_bundle, tmp_path_factory.mktemp("observed") / "bundle")


@pytest.fixture(scope="module")
def observed(bundle, tmp_path_factory):
    """(API URL, API key, worker metrics URL, folder, API metrics URL) of gunicorn and one
    inference worker: each its own METRICS_PORT, as two containers have."""
    folder = tmp_path_factory.mktemp("observed-stack")
    port, api_port = free_port(), free_port()
    overrides = {
        "model_bundle": bundle,
        "bench_standin_model_ms": 5,
        "metrics_port": port,
        "ready_file": folder / "ready",
        "log_format": "json",
        "batch_max_size": 4,
    }
    with services(folder / "data", **overrides) as settings:
        worker = start_worker(settings, folder / "worker.log", "inference@observed")
        sender = start_worker(
            settings.with_overrides(metrics_port=0),
            folder / "webhooks.log",
            "webhooks@observed",
            "webhooks",
        )  # its own port: none here
        db = Database(settings.database_url)
        try:
            api_settings = settings.with_overrides(metrics_port=api_port)
            with production_api(api_settings, folder / "gunicorn.log") as api:
                wait_ready(worker, folder / "worker.log")
                wait_ready(sender, folder / "webhooks.log")
                yield (
                    api.url,
                    admin_key(db),
                    f"http://127.0.0.1:{port}/metrics",
                    folder,
                    f"http://127.0.0.1:{api_port}/metrics",
                )
        finally:
            stop([worker, sender])
            db.dispose()


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a metrics page: (name, sorted labels) → value."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    """One sample's value (0 when absent)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def call(url: str, key: str, method: str = "GET", body: dict | None = None) -> dict:
    """A JSON request with the key; the JSON answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url,
        data,
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def run_batch(url: str, key: str) -> dict:
    """Submit BATCH images and wait for the batch to complete."""
    images = [base64.b64encode(png((30 + i, 20 + i))).decode() for i in range(BATCH)]
    batch = call(f"{url}/v1/batches", key, "POST", {"images": images})
    deadline = time.monotonic() + 60
    while batch["status"] != "completed" and time.monotonic() < deadline:
        time.sleep(0.2)
        batch = call(url + batch["urls"]["self"], key)
    assert batch["status"] == "completed" and batch["counts"]["succeeded"] == BATCH, batch
    return batch


def test_metrics_answer_on_their_own_port_and_not_on_the_public_one(observed):
    url, key, _, _, metrics = observed
    public = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"})
    assert public.status_code == 404, public.text
    assert public.headers["content-type"] == "application/problem+json"
    assert public.json()["code"] == "not_found"
    assert "captioner_http_requests_total" in httpx.get(metrics).text
    base = metrics.removesuffix("/metrics")
    for path in ("/healthz", "/v1/workers", "/metrics/"):  # the metrics port serves nothing else
        other = httpx.get(base + path, headers={"Authorization": f"Bearer {key}"})
        assert other.status_code == 404, path


def test_the_api_counts_requests_across_its_gunicorn_processes(observed):
    url, _, _, _, metrics = observed
    before = scrape(metrics)
    for _ in range(40):  # new connections: gunicorn spreads them over its 4 processes
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
            assert response.status == 200
    after = scrape(metrics)
    name, labels = "captioner_http_requests_total", {"route": "/healthz", "method": "GET"}
    assert (
        value(after, name, status="200", **labels) - value(before, name, status="200", **labels)
        == 40
    )
    timed = "captioner_http_request_duration_seconds_count"
    assert value(after, timed, **labels) - value(before, timed, **labels) == 40


def test_worker_metrics_count_jobs_batches_and_latency(observed):
    url, key, worker_metrics, _, _ = observed
    before = scrape(worker_metrics)
    run_batch(url, key)
    after = scrape(worker_metrics)

    def grew(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("captioner_jobs_finished_total", status="succeeded", code="") == BATCH
    assert grew("captioner_images_total") == BATCH
    assert grew("captioner_job_seconds_count", stage="end_to_end") == BATCH
    assert grew("captioner_job_seconds_count", stage="queue_wait") == BATCH
    assert grew("captioner_batch_size_sum") == BATCH
    assert grew("captioner_predict_seconds_count") >= 2  # batches of at most 4
    served = [
        dict(labels)
        for (name, labels), v in after.items()
        if name == "captioner_model_info" and v == 1
    ]
    assert len(served) == 1 and served[0]["version"]


def test_the_fleet_state_comes_from_postgres_and_redis(observed):
    url, key, _, _, metrics = observed
    run_batch(url, key)
    samples = scrape(metrics)
    assert value(samples, "captioner_jobs", status="queued") == 0  # all ended
    assert value(samples, "captioner_jobs", status="running") == 0
    assert value(samples, "captioner_workers", role="inference") == 1
    assert value(samples, "captioner_workers", role="webhooks") == 1
    assert value(samples, "captioner_queue_messages", queue="inference") == 0
    assert ("captioner_training_runs", (("status", "queued"),)) in samples
    assert ("captioner_deliveries_pending", ()) in samples
    submitted = value(samples, "captioner_jobs_submitted_total", kind="batch")
    assert submitted >= BATCH and submitted % BATCH == 0


def test_worker_logs_are_json_lines_with_role_worker_and_ids(observed):
    url, key, _, folder, _ = observed
    run_batch(url, key)
    lines = (folder / "worker.log").read_text().splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    others = [line for line in lines if line.strip() and not line.startswith("{")]
    assert events and not others, others  # one JSON event per line, from the first
    assert {e["role"] for e in events} == {"inference"}
    assert all(
        e["worker"].startswith("inference@") and "observed" not in e["worker"] for e in events
    )
    batched = [e for e in events if e.get("batch_id")]
    assert batched, "no line carries the batch's id"
    assert not any("\x1b[" in line for line in lines)
    assert (folder / "ready").exists()  # the model is loaded: a readiness probe passes


def test_workers_lists_every_role_with_its_heartbeat(observed):
    url, key, _, _, _ = observed
    run_batch(url, key)
    deadline = time.monotonic() + 20  # beats every MODEL_POLL_S (2 s)
    while True:  # a beat taken while the batch's deliveries or tasks ran counts them
        workers = {w["role"]: w for w in call(f"{url}/v1/workers", key)["workers"]}
        busy = [w for w in workers.values() if w["in_flight"]]
        if not busy or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(workers) == {"inference", "webhooks"}
    assert workers["inference"]["model_version"] and workers["webhooks"]["model_version"] is None
    for worker in workers.values():
        assert worker["in_flight"] == 0 and worker["last_error"] is None and worker["seen_at"]


def test_workers_send_task_events_for_flower(tmp_path):
    from core.settings import from_env
    from worker.app import create_worker_app

    app = create_worker_app(from_env({"CAPTIONER_DATA_DIR": str(tmp_path)}))
    assert app.conf.worker_send_task_events and app.conf.task_send_sent_event
    assert app.conf.worker_hijack_root_logger is False  # core.logs formats every line
