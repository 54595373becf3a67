"""The JSON shapes of a job and a batch, as GET returns them (and webhooks will send them)."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from flask import url_for

from store.models import Batch, Job, JobStatus, as_utc


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, or None."""
    moment = as_utc(moment)
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def job_json(job: Job) -> dict[str, Any]:
    """Status, request, result, error, timings and links of one job."""
    done = job.status == JobStatus.SUCCEEDED
    return {
        "id": str(job.id),
        "status": job.status,
        "batch_id": str(job.batch_id) if job.batch_id else None,
        "attempts": job.attempts,
        "options": {"beam_size": job.beam_size, "max_length": job.max_length},
        "image": {"format": job.image_format, "width": job.image_width,
                  "height": job.image_height, "bytes": job.image_bytes},
        "result": {
            "caption": job.caption, "tokens": job.tokens,
            "token_log_probs": job.token_log_probs, "model_version": job.model_version,
            "attention_shape": job.attention_shape,
        } if done else None,
        "error": {"code": job.error_code, "message": job.error_message}
        if job.error_code else None,
        "timings": {
            "created_at": iso(job.created_at), "started_at": iso(job.started_at),
            "finished_at": iso(job.finished_at), "queue_ms": job.queue_ms,
            "predict_ms": job.predict_ms, "total_ms": job.total_ms, "batch_size": job.batch_size,
        },
        "urls": job_urls(job, done),
    }  # fmt: skip


def job_urls(job: Job, done: bool) -> dict[str, str]:
    """Links to the job, its batch if any, and, once it succeeded, its attention map."""
    urls = {"self": url_for("jobs.get_job", job_id=job.id),
            "cancel": url_for("jobs.cancel_job", job_id=job.id)}  # fmt: skip
    if job.batch_id:
        urls["batch"] = url_for("batches.get_batch", batch_id=job.batch_id)
    if done:
        urls["attention"] = url_for("attention.get_attention", job_id=job.id)
        urls["attention_png"] = url_for("attention.get_attention_png", job_id=job.id)
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
        "jobs": [job_json(job) for job in jobs],
        "urls": {"self": url_for("batches.get_batch", batch_id=batch.id)},
    }


def encode_cursor(job: Job) -> str:
    """An opaque cursor for the page after `job`."""
    raw = f"{iso(job.created_at)}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
