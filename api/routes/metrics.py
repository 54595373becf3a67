"""/metrics for Prometheus: the API's own counters, and the fleet's state read at scrape time.

Requests are counted by route template (`/v1/jobs/<uuid:job_id>`, never the id) and status.
The fleet's numbers come from Postgres (jobs queued and running, training runs, pending
deliveries, workers with a recent heartbeat) and Redis (messages per queue): see store.fleet.

Under gunicorn (production) it answers on METRICS_PORT alone, never on the public port
(captioner/gunicorn_conf.py); the embedded server (`captioner api`, `captioner up`) serves it on
its one port, which is on loopback by default.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response
from prometheus_client.core import GaugeMetricFamily

from api.auth import public
from api.services import services
from core.metrics import exposition
from store.fleet import fleet
from store.registry import live_window_s

bp = Blueprint("metrics", __name__)
log = logging.getLogger(__name__)
PATH = "/metrics"
# The gauges read at scrape time (the dashboard's test checks its queries against these and the
# metrics core.metrics defines).
FLEET = (
    "captioner_jobs",
    "captioner_training_runs",
    "captioner_workers",
    "captioner_deliveries_pending",
    "captioner_queue_messages",
    "captioner_training_run_epoch",
    "captioner_training_run_loss",
    "captioner_training_run_validation",
)


@bp.get(PATH)
@public
def metrics():
    """Prometheus' text format: this API's counters (all its processes) and the fleet's state."""
    text, content_type = exposition(FleetCollector())
    return Response(text, content_type=content_type)


class FleetCollector:
    """Gauges read from Postgres and Redis when Prometheus scrapes."""

    def collect(self):
        live_s = live_window_s(services().settings.model_poll_s)  # as /v1/workers lists them
        with services().db.session() as session:
            state = fleet(session, live_s)
        yield gauge("captioner_jobs", "Jobs queued or running (Postgres)", "status", state.jobs)
        yield gauge(
            "captioner_training_runs", "Training runs by status (Postgres)", "status", state.runs
        )
        yield gauge(
            "captioner_workers", "Workers with a recent heartbeat, by role", "role", state.workers
        )
        yield gauge(
            "captioner_deliveries_pending",
            "Webhook deliveries waiting for an attempt",
            None,
            {"": state.deliveries_pending},
        )
        yield from run_gauges(state.running_runs)
        yield gauge(
            "captioner_queue_messages",
            "Messages waiting in each Redis queue (not those a worker prefetched)",
            "queue",
            queue_lengths(),
        )


def run_gauges(runs) -> list[GaugeMetricFamily]:
    """Epoch, loss and last validation metrics of each running training run."""
    epoch = GaugeMetricFamily(
        "captioner_training_run_epoch", "A running run's epoch", labels=["run_id"]
    )
    loss = GaugeMetricFamily(
        "captioner_training_run_loss", "A running run's loss this epoch", labels=["run_id"]
    )
    validation = GaugeMetricFamily(
        "captioner_training_run_validation",
        "A running run's last validation metrics",
        labels=["run_id", "metric"],
    )
    for run in runs:
        epoch.add_metric([run.run_id], run.epoch)
        if run.loss is not None:
            loss.add_metric([run.run_id], run.loss)
        for name, value in run.validation.items():
            validation.add_metric([run.run_id, name], value)
    return [epoch, loss, validation]


def gauge(name: str, text: str, label: str | None, values: dict) -> GaugeMetricFamily:
    """A gauge family with one sample per `values` item (no label when `label` is None)."""
    family = GaugeMetricFamily(name, text, labels=[label] if label else [])
    for key, value in values.items():
        family.add_metric([key] if label else [], value)
    return family


def queue_lengths() -> dict[str, int]:
    """Messages per queue, or none when Redis does not answer (the scrape still succeeds)."""
    try:
        return services().broker.queue_lengths()
    except Exception:  # noqa: BLE001 - a scrape must not fail because Redis is away
        log.warning("could not read the queues' lengths", exc_info=True)
        return {}
