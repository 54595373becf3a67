"""Submissions, after their schema passed them (api/schemas/jobs.py): what a schema cannot say,
and recording them. Shared by the jobs and batches routes.

- Images arrive as multipart files or base64 text; a header is checked for format and size
  here (the worker decodes once).
- URLs (images, webhooks) must pass the SSRF guard, which needs the resolver.
- The `Cancel-After` header sets a deadline like `deadline_s` does.
- The checked images become jobs: recorded already marked as sent, then enqueued.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Protocol

from flask import request

from api.auth import tenant
from api.deadlines import parse_deadline
from api.schemas.jobs import BatchForm, BatchJson, JobForm, JobJson, Submission
from api.services import services
from core.errors import ErrorResponse, ImageError, UrlError
from core.images import (
    CORRUPT,
    EMPTY,
    NOT_AN_IMAGE,
    TOO_LARGE,
    UNSUPPORTED,
    ImageInfo,
    inspect_header,
)
from core.metrics import JOBS_UNSENT
from core.netguard import Guard
from core.options import MAX_SEED
from store import jobs, retention
from store.blob_keys import image_key
from store.images import StoredImage
from store.tables import utcnow

IMAGE_STATUS = {EMPTY: 400, TOO_LARGE: 413, NOT_AN_IMAGE: 415, UNSUPPORTED: 415, CORRUPT: 400}


@dataclass(frozen=True)
class Checked:
    """A submission its schema passed, checked for what the schema cannot say, before anything
    is stored: its images and their headers, or their URLs; what its jobs share; its webhook."""

    images: list[bytes]
    infos: list[ImageInfo]  # each image's format and size, read from its header
    urls: list[str]  # the images' URLs instead, let through by the SSRF guard
    template: jobs.NewJob  # what every job of it shares (see `job_template`)
    webhook_url: str | None
    webhook_events: list[str] | None

    @property
    def count(self) -> int:
        """The jobs it makes."""
        return len(self.images) + len(self.urls)


def check_submission(asked: JobJson | JobForm | BatchJson | BatchForm) -> Checked:
    """A submission checked: a 4xx naming the first problem, else what to store and record."""
    images = images_of(asked)
    batch = isinstance(asked, BatchJson | BatchForm)
    infos = [check_image(data, f"images[{i}]: " if batch else "") for i, data in enumerate(images)]
    return Checked(images, infos, urls_of(asked), job_template(asked), *webhook_of(asked))


def images_of(asked: JobJson | JobForm | BatchJson | BatchForm) -> list[bytes]:
    """The images a submission carries (none when it sends URLs), in order."""
    if isinstance(asked, JobForm):
        return [asked.image.read()] if asked.image is not None else []
    if isinstance(asked, BatchForm):
        return [upload.read() for upload in asked.images or ()]
    if isinstance(asked, JobJson):
        return [decode_base64(asked.image, "image")] if asked.image else []
    return [decode_base64(value, f"images[{i}]") for i, value in enumerate(asked.images or ())]


def decode_base64(value: str, name: str) -> bytes:
    """Standard base64 (a data: URL prefix is allowed) to bytes; `name` says where it was."""
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ErrorResponse(400, "invalid_base64", f"{name} is not valid base64") from None
    if not data:
        raise ErrorResponse(400, "missing_image", f"{name} must be a base64 string")
    return data


def urls_of(asked: JobJson | JobForm | BatchJson | BatchForm) -> list[str]:
    """The image URLs a submission names (none when it sends images), each let through by the
    SSRF guard."""
    if isinstance(asked, JobJson | JobForm):
        named = {"image_url": asked.image_url} if asked.image_url else {}
    else:
        named = {f"image_urls[{i}]": url for i, url in enumerate(asked.image_urls or ())}
    for name, url in named.items():
        check_url(url, "invalid_image_url", name)
    return list(named.values())


class Announced(Protocol):
    """A request that may name a webhook (a submission, a training run)."""

    webhook: str | None
    webhook_events: list[str]


def webhook_of(asked: Announced) -> tuple[str | None, list[str] | None]:
    """The webhook URL (let through by the SSRF guard) and its events, or (None, None)."""
    if asked.webhook is None:
        return None, None
    check_url(asked.webhook, "invalid_webhook", "webhook")
    return asked.webhook, asked.webhook_events


def check_url(url: str, code: str, name: str) -> None:
    """A 400 `code` saying why, unless the SSRF guard lets the service reach `url`. A name that
    does not resolve now passes: the guard checks again before every connection."""
    found = services()
    try:
        Guard.from_allow(found.settings.url_allow, found.resolver).check(url)
    except UrlError as exc:
        if exc.code != "url_unreachable":
            raise ErrorResponse(400, code, f"{name} refused: {exc.message}") from None


def check_image(data: bytes, where: str = "") -> ImageInfo:
    """The image's format and size from its header, or a 4xx naming the problem (a body that
    fails to decode fails its job in the worker, with `corrupt_image`)."""
    settings = services().settings
    try:
        return inspect_header(data, settings.max_image_bytes, settings.max_image_pixels)
    except ImageError as exc:
        raise ErrorResponse(IMAGE_STATUS[exc.code], exc.code, where + exc.message) from None


def job_template(asked: Submission) -> jobs.NewJob:
    """What every job of a submission shares (owner, decoding options, deadline); the image
    fields are filled in per job by `image_job` or `url_job`."""
    deadline = parse_deadline(asked.deadline_s, request.headers.get("Cancel-After"), utcnow())
    return jobs.NewJob(
        owner=tenant(),
        image_key="",
        image_bytes=0,
        image_format="",
        image_width=0,
        image_height=0,
        beam_size=asked.beam_size,
        max_length=asked.max_length,
        temperature=asked.temperature,
        seed=asked.seed,
        deadline_at=deadline,
        enqueued_at=utcnow(),
    )


def image_job(
    template: jobs.NewJob,
    job_id: uuid.UUID,
    stored: StoredImage,
    data: bytes,
    info: ImageInfo,
    index: int = 0,
) -> jobs.NewJob:
    """A checked and stored image's job, the `index`-th of its submission."""
    return replace(
        template,
        id=job_id,
        image_key=stored.key,
        image_offset=stored.offset,
        image_data=stored.data,
        image_bytes=len(data),
        image_format=info.format,
        image_width=info.width,
        image_height=info.height,
        seed=job_seed(template, index),
    )


def url_job(template: jobs.NewJob, url: str, index: int = 0) -> jobs.NewJob:
    """A job whose image the worker fetches from `url` into the job's own key (its size is
    unknown until then: 0)."""
    job_id = uuid.uuid4()
    return replace(
        template,
        id=job_id,
        image_key=image_key(job_id),
        image_url=url,
        seed=job_seed(template, index),
    )


def job_seed(template: jobs.NewJob, index: int) -> int | None:
    """The seed a job records, so its caption can be had again: the one asked for (plus the
    job's place in its batch), else a random one when it samples; None for a job that does not
    sample and named no seed."""
    if template.seed is not None:
        return (template.seed + index) % (MAX_SEED + 1)
    return secrets.randbelow(MAX_SEED + 1) if template.temperature else None


@contextmanager
def dropping_blobs_on_error() -> Iterator[list[str]]:
    """A list for the keys a submission stores (each added before its PUT); when storing or
    recording then fails (the blob store or the database away, say), those blobs are deleted,
    so a refused submission leaves nothing behind. One the store cannot delete now (a PUT cut
    off may still have landed) is noted for the sweeper. A missing key is no error."""
    keys: list[str] = []
    try:
        yield keys
    except Exception:
        retention.delete_blobs(services().blobs, sorted(set(keys)), services().db)
        raise


def enqueue(job_ids: Sequence[uuid.UUID], per_message: int = 1) -> set[str]:
    """Send the committed jobs to the broker; the ids (as text) it did not take.

    Their rows were recorded as sent in the insert's transaction, which spares a second one
    per submission. Ids the broker refuses are marked unsent again, for the sweeper; if the
    process dies between the commit and the send, the sweeper sends them once they have waited
    unclaimed for a lease with no message waiting (`worker.sweeper`).
    """
    services().queued.add(tenant(), len(job_ids))
    sent = services().broker.jobs(job_ids, per_message)
    unsent = job_ids[len(sent) :]
    if unsent:
        JOBS_UNSENT.inc(len(unsent))
        with services().db.session() as session:
            jobs.mark_unsent(session, unsent)
    return {str(job_id) for job_id in unsent}
