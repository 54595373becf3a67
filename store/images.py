"""Job images: a small single upload lives in its job's row (`jobs.image_data`: no S3 request
at all, and the claim reads it with the job), a larger one is its own object; a batch's images
are packed a chunk at a time into one object, and each job knows its slice (one PUT and one GET
per chunk, not per image)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import inspect

from core.errors import BlobNotFound, BlobStoreError
from store.blob_keys import image_key, pack_key
from store.blobs import BlobStore
from store.tables import Job


@dataclass(frozen=True)
class StoredImage:
    """Where one image lies: its key, and its offset when the object is a pack."""

    key: str  # empty for an image kept in the row
    offset: int | None = None
    data: bytes | None = None  # the bytes, when the row keeps them


def put_image(
    blobs: BlobStore,
    job_id: uuid.UUID,
    data: bytes,
    content_type: str,
    inline_up_to: int = 0,
    tried: list[str] | None = None,
) -> StoredImage:
    """Keep one upload in its row when it has at most `inline_up_to` bytes, else store it as
    its own object (its key added to `tried` first: a PUT that fails may have landed)."""
    if len(data) <= inline_up_to:
        return StoredImage("", data=data)
    key = image_key(job_id)
    _put(blobs, key, data, content_type, tried)
    return StoredImage(key)


def _put(blobs: BlobStore, key: str, data: bytes, kind: str, tried: list[str] | None) -> None:
    if tried is not None:
        tried.append(key)
    blobs.put(key, data, kind)


def put_pack(
    blobs: BlobStore, images: Sequence[bytes], tried: list[str] | None = None
) -> list[StoredImage]:
    """Store images back to back in one object (its key added to `tried` first); where each
    one lies, in order."""
    key, offsets, at = pack_key(uuid.uuid4()), [], 0
    for data in images:
        offsets.append(at)
        at += len(data)
    _put(blobs, key, b"".join(images), "application/octet-stream", tried)
    return [StoredImage(key, offset) for offset in offsets]


def read_images(
    blobs: BlobStore, jobs: Sequence[Job], keep_errors: bool = False
) -> dict[uuid.UUID, bytes | None | BlobStoreError]:
    """Each job's image bytes (None when the object is gone): from the row when it keeps them
    (the caller loaded `image_data`), else one GET per distinct object. A store that cannot be
    read raises BlobStoreError, or with `keep_errors` gives it as the image of each job whose
    object it could not read (the others still have theirs)."""
    kept = {job.id: _kept(job) for job in jobs}
    keys = dict.fromkeys(job.image_key for job in jobs if kept[job.id] is None and job.image_key)
    objects = {key: _get(blobs, key, keep_errors) for key in keys}
    return {
        job.id: kept[job.id]
        if kept[job.id] is not None
        else _slice(objects.get(job.image_key), job)
        for job in jobs
    }


def _get(blobs: BlobStore, key: str, keep_errors: bool) -> bytes | None | BlobStoreError:
    try:
        return blobs.get(key)
    except BlobNotFound:
        return None
    except BlobStoreError as exc:
        if keep_errors:
            return exc
        raise


def _kept(job: Job) -> bytes | None:
    """The bytes the row keeps. `image_data` is deferred: a job still in its session loads it
    now; a detached one has it only if its query loaded it (the claim, the attention picture)."""
    state = inspect(job)
    if "image_data" in state.unloaded and state.session is None:
        return None
    return job.image_data


def _slice(data: bytes | None | BlobStoreError, job: Job) -> bytes | None | BlobStoreError:
    if not isinstance(data, bytes) or job.image_offset is None:
        return data
    return data[job.image_offset : job.image_offset + job.image_bytes]
