"""Caption corrections: POST /v1/jobs/{id}/feedback keeps the caption an image should have had
(with a copy of the image), per tenant; training runs can learn from them (`feedback` in
POST /v1/training-runs). GET /v1/feedback lists them, DELETE forgets one."""

from __future__ import annotations

import uuid

from flask import Blueprint, jsonify

from api.auth import requires, tenant
from api.contract import contract, validated, validated_query
from api.errors import found
from api.lookups import find_job
from api.schemas import feedback as schema
from api.schemas.base import Problem
from api.services import services
from core.errors import ErrorResponse
from store import feedback, retention
from store.payloads import feedback_json
from store.tables import JobStatus, Scope

bp = Blueprint("feedback", __name__, url_prefix="/v1")


@bp.post("/jobs/<uuid:job_id>/feedback")
@contract(
    schema.Feedback, status=201, json=schema.FeedbackCreate, more={409: Problem}, tags=["feedback"]
)
@requires(Scope.JOBS)
def send_feedback(job_id: uuid.UUID):
    """Correct a succeeded job's caption: 201 with the correction. 409 before the job has a
    caption, or once its image is gone."""
    caption = " ".join(validated().caption.split())
    with services().db.session() as session:
        job = find_job(session, job_id)
        if job.status != JobStatus.SUCCEEDED:
            raise ErrorResponse(
                409,
                "not_captioned",
                f"the job is {job.status}; only a succeeded job's caption can be corrected",
            )
        row = feedback.record_feedback(session, services().blobs, job, caption)
        if row is None:
            raise ErrorResponse(409, "image_gone", "the job's image is no longer stored")
        body = feedback_json(row)
    return jsonify(body), 201, {"Location": body["urls"]["self"]}


@bp.get("/feedback")
@contract(schema.FeedbackList, query=schema.FeedbackListQuery, tags=["feedback"])
@requires(Scope.JOBS)
def list_feedback():
    """The tenant's corrections, newest first."""
    with services().db.session() as session:
        rows = feedback.list_feedback(session, tenant(), limit=validated_query().limit)
        return jsonify({"feedback": [feedback_json(row) for row in rows]})


@bp.get("/feedback/<uuid:feedback_id>")
@contract(schema.Feedback, tags=["feedback"])
@requires(Scope.JOBS)
def get_feedback(feedback_id: uuid.UUID):
    """One correction."""
    with services().db.session() as session:
        row = feedback.get_feedback(session, feedback_id, tenant())
        return jsonify(feedback_json(found(row, "feedback", feedback_id)))


@bp.delete("/feedback/<uuid:feedback_id>")
@contract(None, status=204, tags=["feedback"])
@requires(Scope.JOBS)
def delete_feedback(feedback_id: uuid.UUID):
    """Forget a correction and its copy of the image: 204. Runs already trained keep what they
    learnt."""
    with services().db.session() as session:
        row = found(feedback.get_feedback(session, feedback_id, tenant()), "feedback", feedback_id)
        image_key = feedback.delete_feedback(session, row)
    retention.delete_blobs(services().blobs, [image_key], services().db)  # the row gone
    return "", 204
