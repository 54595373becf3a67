"""/v1/datasets: upload a COCO-format archive for training runs; it is checked before it is kept."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

from flask import Blueprint, jsonify, request

from api.auth import requires, tenant
from api.body_limits import body_limit, dataset_body
from api.contract import contract, validated, validated_query
from api.errors import found
from api.idempotency import creates_resource
from api.schemas import datasets as schema
from api.schemas.base import Problem
from api.schemas.datasets import MAX_NAME
from api.services import services
from core.archives import inspect_archive
from core.errors import DatasetError, ErrorResponse
from store import datasets, retention
from store.blob_keys import dataset_key
from store.payloads import dataset_json
from store.tables import Dataset, Scope

bp = Blueprint("datasets", __name__, url_prefix="/v1/datasets")
RAW_TYPES = (
    "application/zip",
    "application/x-tar",
    "application/gzip",
    "application/x-gzip",
    "application/octet-stream",
)


@bp.post("")
@contract(
    schema.Dataset,
    status=201,
    query=schema.DatasetUploadQuery,
    form=schema.DatasetForm,
    more={409: Problem, 422: Problem},
    tags=["datasets"],
)
@requires(Scope.TRAINING)
@creates_resource
@body_limit(dataset_body)
def upload_dataset():
    """Check the archive (every bad entry is named in a 400), store it, record it: 201.

    Send the zip or tar archive as a multipart file named `archive` (with an optional `name`
    field), or as the raw body with one of application/zip, application/x-tar,
    application/gzip, application/x-gzip or application/octet-stream, named by `?name=`.
    """
    settings = services().settings
    with tempfile.TemporaryDirectory() as folder:
        path, name = save_upload(Path(folder) / "archive")
        try:
            summary = inspect_archive(path, max_image_pixels=settings.max_image_pixels)
        except DatasetError as exc:
            raise ErrorResponse(400, "invalid_dataset", str(exc), problems=exc.problems) from None
        dataset_id = uuid.uuid4()
        key = dataset_key(dataset_id)
        services().blobs.put_file(key, path, f"application/{summary.format}")  # streamed
        row = Dataset(
            id=dataset_id,
            owner=tenant(),
            name=name,
            archive_key=key,
            format=summary.format,
            bytes=path.stat().st_size,
            unpacked_bytes=summary.unpacked_bytes,
            splits=summary.splits,
            images=summary.images,
            captions=summary.captions,
        )
    with services().db.session() as session:
        body = dataset_json(datasets.create_dataset(session, row))
    return jsonify(body), 201, {"Location": body["urls"]["self"]}


def save_upload(path: Path) -> tuple[Path, str]:
    """The archive (a multipart file named 'archive', or the raw body) on disk, and its name."""
    if request.mimetype == "multipart/form-data":
        asked = validated()
        asked.archive.save(path)
        name = asked.name or asked.archive.filename or validated_query().name
    elif request.mimetype in RAW_TYPES:
        with open(path, "wb") as out:
            shutil.copyfileobj(request.stream, out, 1 << 20)
        name = validated_query().name
    else:
        raise ErrorResponse(
            415,
            "unsupported_media_type",
            "send a zip or tar archive as a "
            "multipart file named 'archive', or as the body with one of "
            f"{RAW_TYPES}",
        )
    if path.stat().st_size == 0:
        raise ErrorResponse(400, "missing_archive", "the archive is empty")
    return path, name[:MAX_NAME]


@bp.get("")
@contract(schema.DatasetList, tags=["datasets"])
@requires(Scope.TRAINING)
def list_datasets():
    """The caller's datasets, newest first."""
    with services().db.session() as session:
        found = datasets.list_datasets(session, tenant())
        return jsonify({"datasets": [dataset_json(d) for d in found]})


@bp.get("/<uuid:dataset_id>")
@contract(schema.Dataset, tags=["datasets"])
@requires(Scope.TRAINING)
def get_dataset(dataset_id: uuid.UUID):
    """One dataset: its size per split."""
    with services().db.session() as session:
        dataset = datasets.get_dataset(session, dataset_id, owner=tenant())
        return jsonify(dataset_json(found(dataset, "dataset", dataset_id)))


@bp.delete("/<uuid:dataset_id>")
@contract(None, status=204, more={409: Problem}, tags=["datasets"])
@requires(Scope.TRAINING)
def delete_dataset(dataset_id: uuid.UUID):
    """Delete a dataset and its archive: 204; 409 while a queued or running training run uses it
    (ended runs keep their description of it)."""
    with services().db.session() as session:
        found(datasets.get_dataset(session, dataset_id, owner=tenant()), "dataset", dataset_id)
        removal = retention.delete_dataset(session, dataset_id)
        if removal.blocked_by:
            raise ErrorResponse(
                409,
                "dataset_in_use",
                "a queued or running training run uses "
                "the dataset; delete it once the run has ended (or cancel it)",
                training_runs=[str(run) for run in removal.blocked_by],
            )
    retention.delete_blobs(services().blobs, removal.blob_keys, services().db)  # row gone
    return "", 204
