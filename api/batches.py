"""/v1/batches: submit up to 100 images at once, follow the batch as its jobs finish."""

from __future__ import annotations

import uuid

from flask import Blueprint, jsonify, request

from api.errors import found
from api.jobs import OWNER, enqueue, stored_job
from api.services import services
from api.uploads import check_image, read_batch
from store import batches, jobs
from store.payloads import batch_json

bp = Blueprint("batches", __name__, url_prefix="/v1/batches")


@bp.post("")
def submit_batch():
    """Check every image, store them, record the batch and its jobs at once, enqueue: 202."""
    images, options = read_batch(request)
    settings = services().settings
    infos = [check_image(data, settings, f"images[{i}]: ") for i, data in enumerate(images)]
    new_jobs = [stored_job(data, info, options) for data, info in zip(images, infos, strict=True)]
    with services().db.session() as session:
        batch = batches.create_batch(session, OWNER, new_jobs, options.webhook_url,
                                     options.webhook_events)  # fmt: skip
        members = jobs.batch_jobs(session, batch.id)
    enqueue([job.id for job in members])
    body = batch_json(batch, members)
    response = jsonify(body)
    response.status_code = 202
    response.headers["Location"] = body["urls"]["self"]
    return response


@bp.get("/<uuid:batch_id>")
def get_batch(batch_id: uuid.UUID):
    """One batch: status, counts per job status, and every job in submission order."""
    with services().db.session() as session:
        batch = find_batch(session, batch_id)
        return jsonify(batch_json(batch, jobs.batch_jobs(session, batch_id)))


def find_batch(session, batch_id: uuid.UUID):
    """The caller's batch or a 404."""
    return found(batches.get_batch(session, batch_id, owner=OWNER), "batch", batch_id)
