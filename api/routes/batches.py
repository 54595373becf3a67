"""/v1/batches: submit up to 100 images at once, follow the batch as its jobs finish, delete it."""

from __future__ import annotations

import uuid

from flask import Blueprint, jsonify

from api.auth import requires, tenant
from api.body_limits import BATCH, body_limit
from api.contract import contract, validated
from api.idempotency import creates_resource
from api.limits import check_queue_room
from api.lookups import find_batch
from api.schemas import jobs as schema
from api.schemas.base import Problem
from api.services import services
from api.submissions import (
    Checked,
    check_submission,
    dropping_blobs_on_error,
    enqueue,
    image_job,
    url_job,
)
from core.errors import ErrorResponse
from core.metrics import JOBS_SUBMITTED
from store import batches, jobs, retention
from store.images import put_pack
from store.payloads import batch_json
from store.tables import Scope

bp = Blueprint("batches", __name__, url_prefix="/v1/batches")


@bp.post("")
@contract(
    schema.Batch,
    status=202,
    json=schema.BatchJson,
    form=schema.BatchForm,
    more={409: Problem, 422: Problem},
    tags=["batches"],
)
@requires(Scope.JOBS)
@creates_resource
@body_limit(BATCH)
def submit_batch():
    """Check every image, store them a pack at a time, record the batch and its jobs in one
    transaction, enqueue a message per pack: 202."""
    checked = check_submission(validated())
    check_queue_room(checked.count)
    chunk = services().settings.batch_max_size  # one pack and one message per chunk
    with dropping_blobs_on_error() as stored_keys:
        if checked.urls:
            new_jobs = [url_job(checked.template, url, i) for i, url in enumerate(checked.urls)]
        else:
            new_jobs = image_jobs(checked, chunk, stored_keys)
        body = record_batch(new_jobs, (checked.webhook_url, checked.webhook_events))
    return accepted(body, new_jobs, chunk)


def image_jobs(checked: Checked, chunk: int, stored_keys: list[str]) -> list[jobs.NewJob]:
    """The images stored a pack of `chunk` at a time (each pack's key added to `stored_keys`
    before its PUT), and their jobs."""
    images = checked.images
    stored = [
        place
        for start in range(0, len(images), chunk)
        for place in put_pack(services().blobs, images[start : start + chunk], stored_keys)
    ]
    placed = enumerate(zip(stored, images, checked.infos, strict=True))
    return [
        image_job(checked.template, uuid.uuid4(), place, data, info, i)
        for i, (place, data, info) in placed
    ]


def record_batch(new_jobs: list[jobs.NewJob], webhook: tuple[str | None, list[str] | None]) -> dict:
    """Record the batch and its jobs in one transaction; the answer's body."""
    with services().db.session() as session:
        batch, members = batches.create_batch(session, tenant(), new_jobs, *webhook)
        return batch_json(batch, members)  # from the rows in memory


def accepted(body: dict, new_jobs: list[jobs.NewJob], chunk: int):
    """Enqueue the recorded batch, a message per chunk: 202."""
    unsent = enqueue([new.id for new in new_jobs], per_message=chunk)
    for job in body["jobs"]:
        job["enqueued"] = job["id"] not in unsent
    JOBS_SUBMITTED.labels("batch").inc(len(new_jobs))
    response = jsonify(body)
    response.status_code = 202
    response.headers["Location"] = body["urls"]["self"]
    return response


@bp.get("/<uuid:batch_id>")
@contract(schema.Batch, tags=["batches"])
@requires(Scope.JOBS)
def get_batch(batch_id: uuid.UUID):
    """One batch: status, counts per job status, and every job in submission order."""
    with services().db.session() as session:
        batch = find_batch(session, batch_id)
        return jsonify(batch_json(batch, jobs.batch_jobs(session, batch_id)))


@bp.delete("/<uuid:batch_id>")
@contract(None, status=204, more={409: Problem}, tags=["batches"])
@requires(Scope.JOBS)
def delete_batch(batch_id: uuid.UUID):
    """Delete a batch and every job of it (see DELETE /v1/jobs/{id}): 204; 409 while one runs."""
    with services().db.session() as session:
        find_batch(session, batch_id)
        removal = retention.delete_batch(session, batch_id)
        if removal.blocked_by:
            raise ErrorResponse(
                409,
                "job_running",
                f"{len(removal.blocked_by)} of the batch's "
                "jobs are running; delete the batch once they have ended",
                running=[str(job_id) for job_id in removal.blocked_by],
            )
    retention.delete_blobs(services().blobs, removal.blob_keys, services().db)  # rows gone
    services().notifier.finished_many(removal.deleted)
    return "", 204
