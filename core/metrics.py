"""Prometheus metrics (prometheus-client): what each process counts as it works.

The API counts requests and submissions; under gunicorn its processes share a directory
(`PROMETHEUS_MULTIPROC_DIR`, prometheus-client's multiprocess mode), and any of them answers
/metrics for all. Each worker process serves its own on METRICS_PORT (+ its GPU index). Numbers
that are state rather than events (queued and running jobs, queue lengths, training runs,
workers) are read from Postgres and Redis when /metrics is scraped (api.routes.metrics): Postgres is
the record, so they do not depend on which process counted what.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.multiprocess import MultiProcessCollector

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
SIZES = (1, 2, 4, 8, 16, 32, 64, 128)

HTTP_REQUESTS = Counter(
    "captioner_http_requests", "API requests answered", ["route", "method", "status"]
)
HTTP_SECONDS = Histogram(
    "captioner_http_request_duration_seconds",
    "API request latency",
    ["route", "method"],
    buckets=SECONDS,
)
JOBS_SUBMITTED = Counter("captioner_jobs_submitted", "Jobs accepted by the API", ["kind"])
JOBS_UNSENT = Counter(
    "captioner_jobs_unsent",
    "Jobs accepted while the broker was away: recorded, sent later by the sweeper",
)
JOBS_FINISHED = Counter(
    "captioner_jobs_finished", "Jobs a worker ended, by status and error code", ["status", "code"]
)
JOB_SECONDS = Histogram(
    "captioner_job_seconds",
    "Job latency: end_to_end (created to finished), queue_wait (created to started)",
    ["stage"],
    buckets=SECONDS,
)
PREDICT_SECONDS = Histogram(
    "captioner_predict_seconds", "One batch's forward pass", buckets=SECONDS
)
# A worker's two statements per chunk: the claim and the store of its results. Postgres is what
# saturates first when workers are added (docs/capacity.md): these grow before the GPUs idle.
STORE_SECONDS = Histogram(
    "captioner_store_seconds",
    "A worker's claim of a chunk, or the store of its results, in Postgres",
    ["step"],
    buckets=SECONDS,
)
BATCH_SIZE = Histogram("captioner_batch_size", "Images in one forward pass", buckets=SIZES)
IMAGES = Counter("captioner_images", "Images captioned (rate: images per second)")
# Flagged over scored, by version: the share of images unlike the version's training images.
# When it rises, the traffic has drifted from what the version was trained on: retrain.
JOBS_FLAGGED = Counter(
    "captioner_jobs_flagged",
    "Jobs captioned with an out-of-distribution warning, by model version",
    ["model_version"],
)
JOBS_SCORED = Counter(
    "captioner_jobs_scored",
    "Jobs captioned with an out-of-distribution score (a bundle with limits), by model version",
    ["model_version"],
)
MODEL_INFO = Gauge(
    "captioner_model_info",
    "The model version this worker serves (1)",
    ["version"],
    multiprocess_mode="liveall",
)
MODEL_SWAP_SECONDS = Histogram(
    "captioner_model_swap_seconds", "Download, load and warm-up of a new version", buckets=SECONDS
)
DEPENDENCY_UP = Gauge(
    "captioner_dependency_up",
    "Whether this worker could use a dependency at its last try (0 during an outage)",
    ["dependency"],
    multiprocess_mode="liveall",
)
JOBS_PUT_BACK = Counter(
    "captioner_jobs_put_back",
    "Jobs put back in the queue without spending an attempt, by the dependency that was away",
    ["dependency"],
)
WEBHOOK_ATTEMPTS = Counter("captioner_webhook_attempts", "Webhook attempts by outcome", ["outcome"])
WEBHOOK_LAG = Histogram(
    "captioner_webhook_lag_seconds", "From the event to its delivery", buckets=SECONDS
)


def multiprocess() -> bool:
    """Whether this process writes its metrics to the shared directory (gunicorn)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def exposition(*more: Iterable) -> tuple[bytes, str]:
    """The text of every metric of this process (of all processes, in multiprocess mode), and
    of the collectors in `more`; with its content type."""
    registry = CollectorRegistry()
    if multiprocess():
        MultiProcessCollector(registry)
    for collector in more:
        registry.register(collector)
    text = generate_latest(registry)
    if not multiprocess():
        text = generate_latest(REGISTRY) + text
    return text, CONTENT_TYPE_LATEST


def serve(port: int) -> None:
    """Serve this process's metrics on `port` (a worker's endpoint), in a daemon thread."""
    start_http_server(port)


def show_version(version: str | None) -> None:
    """Make `version` the one this process reports serving."""
    MODEL_INFO.clear()
    if version:
        MODEL_INFO.labels(version).set(1)
