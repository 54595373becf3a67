"""/v1/jobs/{id}/attention: a succeeded job's attention weights, raw, as JSON, or as a picture."""

from __future__ import annotations

import io
import math
import uuid

import numpy as np
from flask import Blueprint, jsonify, send_file

from api.auth import requires
from api.contract import contract, validated_query
from api.lookups import find_job
from api.schemas import attention as schema
from api.schemas.base import Problem
from api.services import services
from core.errors import BlobNotFound, ErrorResponse
from core.images import open_image
from core.plots import render_attention_grid
from store.blob_keys import attention_key, attention_png_key
from store.images import read_images
from store.tables import Job, JobStatus, Scope

bp = Blueprint("attention", __name__, url_prefix="/v1/jobs")
NPY, PNG = ("application/octet-stream",), ("image/png",)  # 206: a Range of the file
FILE_ERRORS = {409: Problem, 416: Problem, 500: Problem}  # 416: a Range outside the file


@bp.get("/<uuid:job_id>/attention")
@contract(
    schema.Attention,
    query=schema.AttentionQuery,
    more=FILE_ERRORS,
    files={200: NPY, 206: NPY},
    tags=["attention"],
)
@requires(Scope.JOBS)
def get_attention(job_id: uuid.UUID):
    """The (T, 64) float16 weights as the stored .npy, or as T grids of 8×8 with `?format=json`."""
    job, data = succeeded_job(job_id)
    if validated_query().format == "npy":
        return send_file(
            io.BytesIO(data),
            mimetype="application/octet-stream",
            as_attachment=True,
            download_name=f"{job.id}.attention.npy",
        )
    weights = parse_attention(job, data)  # (T, g*g)
    grid = math.isqrt(weights.shape[1])
    cells = weights.astype(np.float64).reshape(len(weights), grid, grid)  # (T, g, g)
    return jsonify(
        {
            "job_id": str(job.id),
            "tokens": job.tokens,
            "shape": list(cells.shape),
            "attention": cells.round(6).tolist(),
        }
    )


@bp.get("/<uuid:job_id>/attention.png")
@contract(None, more=FILE_ERRORS, files={200: PNG, 206: PNG}, tags=["attention"])
@requires(Scope.JOBS)
def get_attention_png(job_id: uuid.UUID):
    """The per-word heat-map grid as a PNG, rendered on first request and cached in blobs."""
    job, data = succeeded_job(job_id, with_image=True)
    blobs = services().blobs
    try:
        picture = blobs.get(attention_png_key(job.id))
    except BlobNotFound:
        picture = render_png(job, data)
        blobs.put(attention_png_key(job.id), picture, "image/png")
    return send_file(io.BytesIO(picture), mimetype="image/png")


def succeeded_job(job_id: uuid.UUID, with_image: bool = False) -> tuple[Job, bytes]:
    """The caller's job if it succeeded (with the image its row keeps, if asked), and its .npy
    attention bytes; 404 when unknown or gone, 409 while it has no attention."""
    with services().db.session() as session:
        job = find_job(session, job_id)
        data = job.attention  # in the row, loaded only here
        if with_image:
            job.image_data  # noqa: B018 - loaded now, for the picture (None: in the blob store)
    if job.status != JobStatus.SUCCEEDED:
        raise ErrorResponse(
            409,
            "attention_not_ready",
            f"the job is {job.status}; attention exists once it has succeeded",
        )
    if data is None:  # a job from before migration 0005: its own object in the blob store
        data = stored_blob(attention_key(job.id), "attention_missing", "attention weights")
    return job, data


def stored_blob(key: str, code: str, what: str) -> bytes:
    """The blob under `key`, or a 404 with `code` when it is gone."""
    try:
        return services().blobs.get(key)
    except BlobNotFound:
        raise ErrorResponse(404, code, f"the {what} are not in the blob store ({key})") from None


def parse_attention(job: Job, data: bytes) -> np.ndarray:
    """The .npy as a (T, g*g) array with one row per token, or a 500 naming the job."""
    try:
        weights = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ErrorResponse(500, "attention_unreadable", f"job {job.id}: {exc}") from None
    tokens, cells = len(job.tokens or ()), weights.shape[-1] if weights.ndim else 0
    fits = weights.ndim == 2 and cells > 0 and math.isqrt(cells) ** 2 == cells
    if not fits or len(weights) != tokens or not np.issubdtype(weights.dtype, np.floating):
        message = f"job {job.id}: attention {weights.shape} does not fit {tokens} tokens"
        raise ErrorResponse(500, "attention_unreadable", message)
    return weights


def render_png(job: Job, data: bytes) -> bytes:
    """Draw the grid from the weights (.npy `data`) and the original image."""
    weights = parse_attention(job, data)  # (T, g*g)
    original = read_images(services().blobs, [job])[job.id]
    if original is None:
        raise ErrorResponse(
            404,
            "image_missing",
            f"the original image bytes are not in the blob store ({job.image_key or 'none'})",
        )
    picture = open_image(original, services().settings.max_image_pixels)  # as the model saw it
    grid = render_attention_grid(picture, job.tokens, weights.astype(np.float32))
    buffer = io.BytesIO()
    grid.save(buffer, "PNG")
    return buffer.getvalue()
