"""The JSON shapes of jobs, batches, training runs, model versions and datasets: what GET
returns and what webhooks send.

Plain functions of the rows (no Flask), so workers build the same objects as the API. Links
(`urls`) are paths; `absolute_urls` prefixes them with the PUBLIC_URL setting where one is set.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from core.formats import OUT_OF_DISTRIBUTION, bundle_limits
from store.blob_keys import checkpoint_prefix
from store.tables import (
    ApiKey,
    Batch,
    Dataset,
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    Feedback,
    Job,
    JobStatus,
    ModelVersion,
    TrainingRun,
    WorkerModel,
    as_utc,
    version_name,
)


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, or None."""
    moment = as_utc(moment)
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def absolute_urls(body: Any, base: str | None) -> Any:
    """`body` with every path in every `urls` object in it prefixed by `base` (None: as is);
    links already absolute stay as they are."""
    if not base:
        return body
    if isinstance(body, list):
        return [absolute_urls(item, base) for item in body]
    if not isinstance(body, dict):
        return body
    return {
        key: {name: base + link if link.startswith("/") else link for name, link in value.items()}
        if key == "urls" and isinstance(value, dict)
        else absolute_urls(value, base)
        for key, value in body.items()
    }


def absolute_urls_text(text: str, base: str | None) -> str:
    """A JSON text (a webhook's stored body) with its links made absolute; as is without `base`."""
    if not base:
        return text
    return json.dumps(absolute_urls(json.loads(text), base), separators=(",", ":"))


def job_json(job: Job) -> dict[str, Any]:
    """Status, request, result, error, timings and links of one job."""
    done = job.status == JobStatus.SUCCEEDED
    return {
        "id": str(job.id),
        "status": job.status,
        "batch_id": str(job.batch_id) if job.batch_id else None,
        "attempts": job.attempts,
        # False only while queued and never handed to the broker (it was away): sent later.
        "enqueued": job.enqueued_at is not None or job.status != JobStatus.QUEUED,
        "options": {
            "beam_size": job.beam_size,
            "max_length": job.max_length,
            "temperature": job.temperature,
            "seed": job.seed,
        },
        "deadline_at": iso(job.deadline_at),  # not started by then: aborted (None: no deadline)
        "image": {
            "format": job.image_format,
            "width": job.image_width,
            "height": job.image_height,
            "bytes": job.image_bytes,
        }
        | ({"url": job.image_url} if job.image_url else {}),
        "result": {
            "caption": job.caption,
            "tokens": job.tokens,
            "token_log_probs": job.token_log_probs,
            "model_version": job.model_version,
            "attention_shape": job.attention_shape,
            "confidence": job.confidence,
            "ood": job.ood,
        }
        if done
        else None,
        "warnings": job_warnings(job),
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
        "timings": {
            "created_at": iso(job.created_at),
            "started_at": iso(job.started_at),
            "finished_at": iso(job.finished_at),
            "queue_ms": job.queue_ms,
            "predict_ms": job.predict_ms,
            "total_ms": job.total_ms,
            "batch_size": job.batch_size,
        },
        "webhook": webhook_json(job),
        "urls": job_urls(job, done),
    }


def job_warnings(job: Job) -> list[str]:
    """What the caller should know before trusting the caption: `out_of_distribution` when the
    image is unlike the model's training images ([] when nothing)."""
    return [OUT_OF_DISTRIBUTION] if (job.ood or {}).get("flagged") else []


def feedback_json(row: Feedback) -> dict[str, Any]:
    """One caption correction: the job, what the model said, what it should have said."""
    return {
        "id": str(row.id),
        "job_id": str(row.job_id),
        "caption": row.caption,
        "model_caption": row.model_caption,
        "model_version": row.model_version,
        "created_at": iso(row.created_at),
        "urls": {"self": f"/v1/feedback/{row.id}", "job": f"/v1/jobs/{row.job_id}"},
    }


def webhook_json(owner: Job | Batch | TrainingRun) -> dict[str, Any] | None:
    """Where and on which events a job, batch or training run is announced, or None."""
    if not owner.webhook_url:
        return None
    return {"url": owner.webhook_url, "events": owner.webhook_events}


def job_urls(job: Job, done: bool) -> dict[str, str]:
    """Links to the job, its batch if any, and, once it succeeded, its attention map."""
    urls = {
        "self": f"/v1/jobs/{job.id}",
        "cancel": f"/v1/jobs/{job.id}/cancel",
        "deliveries": f"/v1/jobs/{job.id}/deliveries",
    }
    if job.batch_id:
        urls["batch"] = f"/v1/batches/{job.batch_id}"
    if done:
        urls["attention"] = f"/v1/jobs/{job.id}/attention"
        urls["attention_png"] = f"/v1/jobs/{job.id}/attention.png"
    return urls


def batch_json(batch: Batch, jobs: list[Job]) -> dict[str, Any]:
    """Progress of a batch: `running` until every job is terminal, counts per status, its jobs."""
    counts = {status.value: 0 for status in JobStatus}
    for job in jobs:
        counts[job.status] += 1
    done = all(JobStatus(job.status).is_terminal for job in jobs)
    finished = [as_utc(job.finished_at) for job in jobs if job.finished_at]
    return {
        "id": str(batch.id),
        "size": batch.size,
        "status": "completed" if done else "running",
        "counts": counts,
        "created_at": iso(batch.created_at),
        "finished_at": iso(max(finished)) if done and finished else None,
        "webhook": webhook_json(batch),
        "jobs": [job_json(job) for job in jobs],
        "urls": {
            "self": f"/v1/batches/{batch.id}",
            "deliveries": f"/v1/batches/{batch.id}/deliveries",
        },
    }


def delivery_json(delivery: Delivery, attempts: list[DeliveryAttempt]) -> dict[str, Any]:
    """A webhook delivery: what was announced where, its state, and every attempt."""
    return {
        "id": str(delivery.id),
        "webhook_id": delivery.message_id,
        "event": delivery.event,
        "resource": {"type": delivery.resource_type, "id": str(delivery.resource_id)},
        "url": delivery.url,
        "status": delivery.status,
        "attempt_count": delivery.attempts,
        "next_attempt_at": iso(delivery.next_attempt_at)
        if delivery.status == DeliveryStatus.PENDING
        else None,
        "created_at": iso(delivery.created_at),
        "finished_at": iso(delivery.finished_at),
        "attempts": [
            {
                "number": a.number,
                "started_at": iso(a.started_at),
                "status_code": a.status_code,
                "latency_ms": round(a.latency_ms, 1),
                "error": a.error,
                "response": a.response,
            }
            for a in attempts
        ],
        "urls": {
            "self": f"/v1/deliveries/{delivery.id}",
            "replay": f"/v1/deliveries/{delivery.id}/replay",
        },
    }


def run_json(run: TrainingRun) -> dict[str, Any]:
    """A training run: request, status, progress, validation history and outcome."""
    return {
        "id": str(run.id),
        "status": run.status,
        "dataset": run.dataset,
        # The architecture is stored among the hyperparameters (runs from before it: no "model").
        "hyperparameters": {k: v for k, v in run.hyperparameters.items() if k != "model"},
        "model": run.hyperparameters.get("model"),
        "base_version": version_name(run.base_version),
        "promotion": run.promotion,
        "attempts": run.attempts,
        "cancel_requested": run.cancel_requested_at is not None,
        "progress": run.progress,
        "history": run.history or [],
        "model_version": version_name(run.model_version),
        "promotion_result": run.promotion_result,
        "checkpoint": {"key": checkpoint_prefix(run.id)} if run.history else None,
        "error": {"code": run.error_code, "message": run.error_message} if run.error_code else None,
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "webhook": webhook_json(run),
        "urls": {
            "self": f"/v1/training-runs/{run.id}",
            "cancel": f"/v1/training-runs/{run.id}/cancel",
            "deliveries": f"/v1/training-runs/{run.id}/deliveries",
            "curves": f"/v1/training-runs/{run.id}/curves",
        },
    }


def model_json(version: ModelVersion) -> dict[str, Any]:
    """A registered model version: where it came from, how well it scored, whether it serves."""
    metrics = version.metrics or {}
    return {
        "version": version.version,
        "active": version.active,
        "parent": version_name(version.parent),
        "training_run_id": str(version.training_run_id) if version.training_run_id else None,
        "dataset": public_dataset(version.dataset),
        "architecture": version.architecture,
        "encoder": {
            "weights": Path(version.encoder_weights).name,
            "fingerprint": version.encoder_fingerprint,
        },
        "metrics": metrics.get("val", {}),
        "best_epoch": metrics.get("best_epoch"),
        **bundle_limits(metrics),
        "history": metrics.get("history", []),
        "bundle": {"key": version.bundle_key, "digest": version.digest},
        "created_at": iso(version.created_at),
        "promoted_at": iso(version.promoted_at),
        "urls": {
            "self": f"/v1/models/{version.version}",
            "promote": f"/v1/models/{version.version}/promote",
        },
    }


def public_dataset(dataset: dict | None) -> dict | None:
    """A version's dataset without server paths: an imported bundle shows its folder's name."""
    if not dataset or "path" not in dataset:
        return dataset
    return {k: v for k, v in dataset.items() if k != "path"} | {"name": Path(dataset["path"]).name}


def worker_label(name: str) -> str:
    """A worker's node name with its host replaced by a digest (no host names in payloads):
    inference@gpu-7.internal → inference@3f1c09a2b4; the same host always gives the same one."""
    role, at, host = name.partition("@")
    return f"{role}@{hashlib.sha256(host.encode()).hexdigest()[:10]}" if at else name


def worker_json(worker: WorkerModel) -> dict[str, Any]:
    """One worker's heartbeat: role, tasks in flight, last error; for an inference worker, what
    it serves and the version it refused, if any."""
    refused = None
    if worker.refused_version:
        refused = {"version": worker.refused_version, "reason": worker.refused_reason}
    return {
        "worker": worker_label(worker.worker),
        "model_version": worker.model_version,
        "refused": refused,
        "swap_ms": worker.swap_ms,
        "swapped_at": iso(worker.swapped_at),
        "seen_at": iso(worker.seen_at),
        "role": worker.role or "inference",  # rows from before migration 0009
        "in_flight": worker.in_flight,
        "away": worker.away or [],
        "last_error": {"message": worker.last_error, "at": iso(worker.last_error_at)}
        if worker.last_error
        else None,
    }


def dataset_json(dataset: Dataset) -> dict[str, Any]:
    """An uploaded dataset: its archive, and its images and captions per split, as stored."""
    stored = ("name", "format", "bytes", "unpacked_bytes", "images", "captions", "splits")
    return {
        "id": str(dataset.id),
        **{name: getattr(dataset, name) for name in stored},
        "created_at": iso(dataset.created_at),
        "urls": {"self": f"/v1/datasets/{dataset.id}"},
    }


def key_json(key: ApiKey) -> dict[str, Any]:
    """An API key's record: never the key, only its first characters."""
    return {
        "id": str(key.id),
        "tenant": key.tenant,
        "name": key.name,
        "scopes": key.scopes,
        "prefix": key.prefix,
        "created_at": iso(key.created_at),
        "last_used_at": iso(key.last_used_at),
        "revoked_at": iso(key.revoked_at),
        "urls": {"self": f"/v1/keys/{key.id}"},
    }
