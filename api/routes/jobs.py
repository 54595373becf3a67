"""/v1/jobs: submit an image, read a job, list jobs, cancel a queued job, delete a job."""

from __future__ import annotations

import base64
import binascii
import re
import time
import uuid
from dataclasses import replace
from datetime import datetime

from flask import Blueprint, jsonify, request

from api.auth import requires, tenant
from api.body_limits import ONE_IMAGE, body_limit
from api.contract import contract, validated, validated_query
from api.errors import found
from api.idempotency import creates_resource
from api.limits import check_queue_room
from api.lookups import find_job
from api.schemas import jobs as schema
from api.schemas.base import Problem
from api.services import services
from api.submissions import (
    check_submission,
    dropping_blobs_on_error,
    enqueue,
    image_job,
    url_job,
)
from core.errors import ErrorResponse
from core.metrics import JOBS_SUBMITTED
from store import jobs, retention
from store.images import put_image
from store.payloads import iso, job_json
from store.tables import Job, JobStatus, Scope

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")
MAX_WAIT_S = 60


@bp.post("")
@contract(
    schema.Job,
    status=202,
    json=schema.JobJson,
    form=schema.JobForm,
    more={200: schema.Job, 409: Problem, 422: Problem},
    tags=["jobs"],
)
@requires(Scope.JOBS)
@creates_resource
@body_limit(ONE_IMAGE)
def submit_job():
    """Check, store the image, record the job, enqueue it: 202 (200 if done within wait)."""
    checked = check_submission(validated())
    check_queue_room(checked.count)
    job_id = uuid.uuid4()
    with dropping_blobs_on_error() as stored_keys:
        if checked.urls:
            new = url_job(checked.template, checked.urls[0])
        else:
            data, info = checked.images[0], checked.infos[0]
            inline = services().settings.inline_image_bytes  # at most this many bytes: in the row
            kind = f"image/{info.format.lower()}"
            stored = put_image(services().blobs, job_id, data, kind, inline, stored_keys)
            new = image_job(checked.template, job_id, stored, data, info)
        new = replace(new, webhook_url=checked.webhook_url, webhook_events=checked.webhook_events)
        with services().db.session() as session:
            body = job_json(jobs.create_job(session, new))  # the answer, from the row in memory
    body["enqueued"] = not enqueue([new.id])
    JOBS_SUBMITTED.labels("job").inc()
    return respond_after_wait(new.id, body)


def respond_after_wait(job_id: uuid.UUID, body: dict):
    """Honour `Prefer: wait=N`: hold up to N seconds for a terminal status (else answer `body`)."""
    wait = prefer_wait(request.headers.get("Prefer", ""))
    if wait:
        body = wait_for_terminal(job_id, wait)[1]
    done = JobStatus(body["status"]).is_terminal
    response = jsonify(body)
    response.status_code = 200 if done else 202
    response.headers["Location"] = body["urls"]["self"]
    if wait:
        response.headers["Preference-Applied"] = f"wait={wait:g}"
    return response


def read_job(job_id: uuid.UUID):
    """The job and its JSON, read once."""
    with services().db.session() as session:
        job = found(jobs.get_job(session, job_id), "job", job_id)  # deleted while waiting: 404
        return job, job_json(job)


def wait_for_terminal(job_id: uuid.UUID, wait: float):
    """Re-read the job each time its finish is announced (or at the fallback) until `wait` ends."""
    deadline = time.monotonic() + wait
    with services().notifier.listening(job_id) as pause:  # subscribed before the first read
        while True:
            job, body = read_job(job_id)
            left = deadline - time.monotonic()
            if JobStatus(job.status).is_terminal or left <= 0:
                return job, body
            pause(left)


def prefer_wait(header: str) -> float:
    """Seconds asked for by `Prefer: wait=N` (RFC 7240), capped; a bare `wait` is the cap
    (Replicate's form); 0 when absent or malformed."""
    match = re.search(
        r"(?:^|[,;\s])wait\s*(?:=\s*(\d+(?:\.\d+)?)\s*)?(?:[,;]|$)", header, re.IGNORECASE
    )
    if not match:
        return 0.0
    return min(float(match.group(1)), MAX_WAIT_S) if match.group(1) else float(MAX_WAIT_S)


@bp.get("/<uuid:job_id>")
@contract(schema.Job, tags=["jobs"])
@requires(Scope.JOBS)
def get_job(job_id: uuid.UUID):
    """One job: status, result or error, timings, links. With `Prefer: wait=N`, held up to N s
    (60 at most) until the job ends: 200 either way, with `Preference-Applied`."""
    with services().db.session() as session:
        body = job_json(find_job(session, job_id))
    wait = prefer_wait(request.headers.get("Prefer", ""))
    if not wait or JobStatus(body["status"]).is_terminal:
        return jsonify(body)
    response = jsonify(wait_for_terminal(job_id, wait)[1])
    response.headers["Preference-Applied"] = f"wait={wait:g}"
    return response


@bp.get("")
@contract(schema.JobList, query=schema.JobListQuery, tags=["jobs"])
@requires(Scope.JOBS)
def list_jobs():
    """Jobs newest first; `status` filters, `cursor` continues, `limit` ≤ 100."""
    asked = validated_query()
    after = decode_cursor(asked.cursor)
    with services().db.session() as session:
        page = jobs.list_jobs(session, tenant(), asked.status, after, asked.limit)
        body = {
            "jobs": [job_json(job) for job in page],
            "next_cursor": encode_cursor(page[-1]) if len(page) == asked.limit else None,
        }
    return jsonify(body)


@bp.post("/<uuid:job_id>/cancel")
@contract(schema.Job, more={409: Problem}, tags=["jobs"])
@requires(Scope.JOBS)
def cancel_job(job_id: uuid.UUID):
    """Cancel a queued job: it will never run. 409 once it has started or ended."""
    with services().db.session() as session:
        job = find_job(session, job_id)
        if not jobs.cancel_job(session, job_id):
            raise ErrorResponse(
                409, "not_cancelable", f"the job is {job.status}; only queued jobs can be canceled"
            )
        session.refresh(job)
        body = job_json(job)
    services().notifier.finished(job_id)
    return jsonify(body)


@bp.delete("/<uuid:job_id>")
@contract(None, status=204, more={409: Problem}, tags=["jobs"])
@requires(Scope.JOBS)
def delete_job(job_id: uuid.UUID):
    """Delete a queued (it never runs) or ended job, its image, attention and deliveries: 204.
    409 while it runs."""
    with services().db.session() as session:
        find_job(session, job_id)
        removal = retention.delete_jobs(session, [job_id])
        if removal.blocked_by:
            raise ErrorResponse(
                409,
                "job_running",
                "the job is running; delete it once it has "
                "ended (it cannot be canceled while it runs)",
            )
    retention.delete_blobs(services().blobs, removal.blob_keys, services().db)  # rows gone
    services().notifier.finished(job_id)  # a request waiting on it answers now (a 404)
    return "", 204


def decode_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    """The (created_at, id) inside a cursor from `encode_cursor`, or a 400."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = raw.split("|")
        return datetime.fromisoformat(created.replace("Z", "+00:00")), uuid.UUID(job_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ErrorResponse(400, "invalid_cursor", "cursor is not one this API returned") from None


def encode_cursor(job: Job) -> str:
    """An opaque cursor for the page after `job`."""
    raw = f"{iso(job.created_at)}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
