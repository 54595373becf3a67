"""Reading a submission: one image or a batch, as multipart files or base64 JSON, plus options."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from flask import Request

from api.deadlines import parse_deadline
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
from core.netguard import Guard
from core.settings import Settings
from store.jobs import DEFAULT_BEAM_SIZE, DEFAULT_MAX_LENGTH, DEFAULT_WEBHOOK_EVENTS, WEBHOOK_EVENTS
from store.tables import utcnow

LIMITS = {"beam_size": (1, 10), "max_length": (1, 50)}
DEFAULTS = {"beam_size": DEFAULT_BEAM_SIZE, "max_length": DEFAULT_MAX_LENGTH}
MAX_BATCH = 100
MAX_URL_CHARS = 2048
OPTION_FIELDS = {"beam_size", "max_length", "temperature", "seed", "webhook", "webhook_events",
                 "deadline_s"}  # fmt: skip
MAX_TEMPERATURE = 2.0
MAX_SEED = 2**32 - 1
JOB_FIELDS = OPTION_FIELDS | {"image", "image_url"}
BATCH_FIELDS = OPTION_FIELDS | {"images", "image_urls"}
IMAGE_STATUS = {EMPTY: 400, TOO_LARGE: 413, NOT_AN_IMAGE: 415, UNSUPPORTED: 415, CORRUPT: 400}


@dataclass(frozen=True)
class Options:
    """Per-job decoding options, and the webhook to tell (for a batch: about the batch)."""

    beam_size: int = DEFAULT_BEAM_SIZE
    max_length: int = DEFAULT_MAX_LENGTH
    temperature: float = 0.0  # above 0: sample the words (beam_size is then 1)
    seed: int | None = None  # the sampling noise's seed; a batch's i-th image gets seed + i
    webhook_url: str | None = None
    webhook_events: tuple[str, ...] | None = None  # in WEBHOOK_EVENTS order; None without a URL
    image_url: str | None = None  # a job's image, for the worker to fetch (instead of bytes)
    image_urls: tuple[str, ...] = ()  # a batch's images, for the workers to fetch
    deadline_at: datetime | None = None  # not started by then: aborted (api.deadlines)


def read_submission(request: Request) -> tuple[bytes, Options]:
    """The image bytes and options of a POST, or a 4xx ErrorResponse naming the problem. With an
    `image_url` instead of an image, the bytes are empty and `options.image_url` is set."""
    refuse_unknown(fields_of(request), JOB_FIELDS, "field")  # a typo is not silently ignored
    if request.mimetype == "multipart/form-data":
        upload, url = request.files.get("image"), request.form.get("image_url")
        options = parse_options(request.form, request.headers.get("Cancel-After"))
        if url_given(upload is not None, url):
            return b"", replace(options, image_url=parse_image_url(url))
        if upload is None:
            raise ErrorResponse(
                400,
                "missing_image",
                "send the image as a multipart file named 'image', or its URL as 'image_url'",
            )
        return upload.read(), options
    body = json_object(request, "an 'image' file", "base64 'image'")
    options = parse_options(body, request.headers.get("Cancel-After"))
    if url_given(body.get("image") not in (None, ""), body.get("image_url")):
        return b"", replace(options, image_url=parse_image_url(body["image_url"]))
    return decode_base64(body.get("image"), "'image'"), options


def fields_of(request: Request) -> set[str]:
    """The names a submission sends: form fields and files, or the JSON object's keys."""
    if request.mimetype == "multipart/form-data":
        return set(request.form) | set(request.files)
    body = request.get_json(silent=True)
    return set(body) if isinstance(body, dict) else set()


def url_given(image_given: bool, url: Any) -> bool:
    """True when the submission names its image by URL; a 400 when it also sends the image."""
    if url in (None, ""):
        return False
    if image_given:
        raise ErrorResponse(400, "invalid_image_url", "send images or their URLs, not both")
    return True


def parse_image_urls(urls: Any) -> tuple[str, ...]:
    """A batch's `image_urls`: a list of 1 to MAX_BATCH URLs, each as `parse_image_url` wants."""
    if not isinstance(urls, list):
        raise ErrorResponse(400, "invalid_image_url", "'image_urls' must be a list of URLs")
    check_batch_size(len(urls))
    return tuple(parse_image_url(url, f"image_urls[{i}]") for i, url in enumerate(urls))


def parse_image_url(url: Any, name: str = "image_url") -> str:
    """An http(s) URL the SSRF guard lets the worker fetch, or a 400 `invalid_image_url`."""
    if not isinstance(url, str) or len(url) > MAX_URL_CHARS:
        raise ErrorResponse(
            400, "invalid_image_url", f"{name} must be a URL of at most {MAX_URL_CHARS} characters"
        )
    check_url(url, "invalid_image_url", name)
    return url


def read_batch(request: Request) -> tuple[list[bytes], Options]:
    """The images (in order) and shared options of a batch POST, or a 4xx ErrorResponse. With
    `image_urls` instead of images, the list is empty and `options.image_urls` is set."""
    refuse_unknown(fields_of(request), BATCH_FIELDS, "field")
    if request.mimetype == "multipart/form-data":
        uploads = request.files.getlist("images")
        options = parse_options(request.form, request.headers.get("Cancel-After"))
        urls = request.form.getlist("image_urls")
        if url_given(bool(uploads), urls or None):
            return [], replace(options, image_urls=parse_image_urls(urls))
        check_batch_size(len(uploads))
        return [upload.read() for upload in uploads], options
    body = json_object(request, "files named 'images'", "a list of base64 'images'")
    if url_given(body.get("images") not in (None, []), body.get("image_urls") or None):
        options = parse_options(body, request.headers.get("Cancel-After"))
        return [], replace(options, image_urls=parse_image_urls(body["image_urls"]))
    values = body.get("images", [])
    if not isinstance(values, list):
        raise ErrorResponse(400, "invalid_images", "'images' must be a list of base64 strings")
    check_batch_size(len(values))
    images = [decode_base64(value, f"images[{i}]") for i, value in enumerate(values)]
    return images, parse_options(body, request.headers.get("Cancel-After"))


def check_image(data: bytes, settings: Settings, where: str = "") -> ImageInfo:
    """The image's format and size from its header, or a 4xx naming the problem (a body that
    fails to decode fails its job in the worker, with `corrupt_image`)."""
    try:
        return inspect_header(data, settings.max_image_bytes, settings.max_image_pixels)
    except ImageError as exc:
        raise ErrorResponse(IMAGE_STATUS[exc.code], exc.code, where + exc.message) from None


def check_batch_size(count: int) -> None:
    """A 400 unless a batch holds from 1 to MAX_BATCH images."""
    if count == 0:
        raise ErrorResponse(400, "empty_batch", "a batch needs at least one image under 'images'")
    if count > MAX_BATCH:
        raise ErrorResponse(
            400, "batch_too_large", f"{count} images; a batch holds at most {MAX_BATCH}"
        )


def json_object(request: Request, multipart_hint: str, json_hint: str) -> dict[str, Any]:
    """The JSON object in the body; 415 for other media types, 400 for other JSON."""
    if request.mimetype != "application/json":
        raise ErrorResponse(
            415,
            "unsupported_media_type",
            f"send multipart/form-data with {multipart_hint}, or JSON with {json_hint}",
        )
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ErrorResponse(400, "invalid_json", "the body must be a JSON object")
    return body


def decode_base64(value: Any, name: str = "'image'") -> bytes:
    """Standard base64 (a data: URL prefix is allowed) to bytes; `name` says where it was."""
    if not isinstance(value, str) or not value:
        raise ErrorResponse(400, "missing_image", f"{name} must be a base64 string")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ErrorResponse(400, "invalid_base64", f"{name} is not valid base64") from None


def refuse_unknown(values: Iterable[str], known: set[str], what: str) -> None:
    """A 400 naming fields the API does not know (a typo would otherwise pass silently)."""
    unknown = sorted(set(values) - known)
    if unknown:
        raise ErrorResponse(
            400, f"unknown_{what}", f"unknown {what}s {unknown}; known: {sorted(known)}"
        )


def parse_options(source, cancel_after: str | None = None) -> Options:
    """beam_size and max_length as whole numbers within their limits, the sampling temperature
    and seed, the webhook, and the deadline (`deadline_s`, or the `Cancel-After` header's)."""
    values = parse_webhook(source)
    values["deadline_at"] = parse_deadline(source.get("deadline_s"), cancel_after, utcnow())
    values["temperature"] = parse_temperature(source.get("temperature") or 0)
    if source.get("seed") not in (None, ""):
        values["seed"] = whole_number(source.get("seed"), "seed", 0, MAX_SEED)
    defaults = {**DEFAULTS, "beam_size": 1 if values["temperature"] else DEFAULT_BEAM_SIZE}
    for name, (low, high) in LIMITS.items():
        values[name] = whole_number(source.get(name, defaults[name]), name, low, high)
    if values["temperature"] and values["beam_size"] > 1:
        raise ErrorResponse(
            400,
            "invalid_option",
            "a temperature above 0 samples one caption: leave beam_size out or set it to 1",
        )
    return Options(**values)


def whole_number(raw: Any, name: str, low: int, high: int) -> int:
    """`raw` (a JSON number or form text) as a whole number from low to high, or a 400."""
    try:
        value = int(raw)
        if isinstance(raw, float | bool) or str(value) != str(raw).strip():
            raise ValueError
    except (TypeError, ValueError, OverflowError):  # OverflowError: 1e999, Infinity
        raise ErrorResponse(400, "invalid_option", f"{name} must be a whole number") from None
    if not low <= value <= high:
        raise ErrorResponse(400, "invalid_option", f"{name} must be from {low} to {high}")
    return value


def parse_temperature(raw: Any) -> float:
    """A finite number from 0 to MAX_TEMPERATURE (JSON number or form text), or a 400."""
    try:
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise ValueError
        value = float(raw)
    except (ValueError, OverflowError):
        value = math.nan
    if not 0.0 <= value <= MAX_TEMPERATURE:  # NaN fails too
        limit = f"from 0 to {MAX_TEMPERATURE:g}"
        raise ErrorResponse(400, "invalid_option", f"temperature must be a number {limit}")
    return value


def parse_webhook(source, allowed: tuple[str, ...] = WEBHOOK_EVENTS) -> dict[str, Any]:
    """`webhook` (an http(s) URL) and `webhook_events` (from `allowed`; default completed)."""
    url, events = source.get("webhook"), source.get("webhook_events")
    if hasattr(source, "getlist"):  # a form: the field may repeat
        events = ",".join(source.getlist("webhook_events"))
    if url in (None, ""):
        if events not in (None, "", []):
            raise ErrorResponse(400, "invalid_webhook", "webhook_events needs a webhook URL")
        return {}
    if not isinstance(url, str) or len(url) > MAX_URL_CHARS:
        raise ErrorResponse(
            400, "invalid_webhook", f"webhook must be a URL of at most {MAX_URL_CHARS} characters"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ErrorResponse(400, "invalid_webhook", "webhook must be an http:// or https:// URL")
    check_url(url, "invalid_webhook", "webhook")
    return {"webhook_url": url, "webhook_events": parse_events(events, allowed)}


def check_url(url: str, code: str, name: str) -> None:
    """A 400 `code` saying why, unless the SSRF guard lets the service reach `url`. A name that
    does not resolve now passes: the guard checks again before every connection."""
    found = services()
    try:
        Guard.from_allow(found.settings.url_allow, found.resolver).check(url)
    except UrlError as exc:
        if exc.code != "url_unreachable":
            raise ErrorResponse(400, code, f"{name} refused: {exc.message}") from None


def parse_events(events: Any, allowed: tuple[str, ...] = WEBHOOK_EVENTS) -> tuple[str, ...]:
    """A list, or comma-separated text, of names from `allowed`, in its order."""
    if events in (None, "", []):
        return DEFAULT_WEBHOOK_EVENTS
    names = events.split(",") if isinstance(events, str) else events
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ErrorResponse(400, "invalid_webhook_events", "webhook_events must be a list of names")
    asked = {name.strip() for name in names}
    unknown = sorted(asked - set(allowed))
    if unknown:
        raise ErrorResponse(
            400,
            "invalid_webhook_events",
            f"unknown webhook_events {unknown}; choose from {list(allowed)}",
        )
    return tuple(event for event in allowed if event in asked)
