"""Reading a submission: a multipart file or base64 JSON, plus validated options."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from flask import Request

from api.errors import ApiError

LIMITS = {"beam_size": (1, 10), "max_length": (1, 50)}
DEFAULTS = {"beam_size": 1, "max_length": 20}


@dataclass(frozen=True)
class Options:
    """Per-job decoding options."""

    beam_size: int = 1
    max_length: int = 20


def read_submission(request: Request) -> tuple[bytes, Options]:
    """The image bytes and options of a POST, or a 4xx ApiError naming the problem."""
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("image")
        if upload is None:
            raise ApiError(400, "missing_image", "send the image as a multipart file named 'image'")
        return upload.read(), parse_options(request.form)
    if request.mimetype == "application/json":
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_json", "the body must be a JSON object")
        return decode_base64(body.get("image")), parse_options(body)
    raise ApiError(
        415,
        "unsupported_media_type",
        "send multipart/form-data with an 'image' file, or JSON with base64 'image'",
    )


def decode_base64(value: Any) -> bytes:
    """Standard base64 (a data: URL prefix is allowed) to bytes."""
    if not isinstance(value, str) or not value:
        raise ApiError(400, "missing_image", "'image' must be a base64 string")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_base64", "'image' is not valid base64") from None


def parse_options(source) -> Options:
    """beam_size and max_length as whole numbers within their limits."""
    values = {}
    for name, (low, high) in LIMITS.items():
        raw = source.get(name, DEFAULTS[name])
        try:
            value = int(raw)
            if isinstance(raw, float | bool) or str(value) != str(raw).strip():
                raise ValueError
        except (TypeError, ValueError):
            raise ApiError(400, "invalid_option", f"{name} must be a whole number") from None
        if not low <= value <= high:
            raise ApiError(400, "invalid_option", f"{name} must be from {low} to {high}")
        values[name] = value
    return Options(**values)
