"""Request body limits per route: each view takes a body of at most its own size.

A view marked `@body_limit(size)` accepts `size(settings)` bytes; any other route (GETs,
cancels, small JSON forms) accepts `SMALL_BODY`. The hook runs before the idempotency hook, which
spools create bodies with the same limit. A declared `Content-Length` over the limit gets a 413
`request_entity_too_large` before a byte of the body is read; a chunked body is read through
a stream that raises the same 413 once the limit is passed, so no more than the limit is ever
held. The app's `MAX_CONTENT_LENGTH` stays as the ceiling over every route's limit; a request
that matches no route gets `SMALL_BODY`.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import BinaryIO

from flask import Flask, request

from api.auth import View
from api.schemas.jobs import MAX_BATCH
from api.services import services
from core.errors import ErrorResponse
from core.settings import Settings

Size = Callable[[Settings], int]
SMALL_BODY = 64 * 1024  # the largest small form: options, a webhook URL, a key's name
PART_OVERHEAD = 1024  # a multipart part's headers, or a base64 string's quotes and data: prefix
TOO_LARGE = "request_entity_too_large"  # Werkzeug's 413 as api.errors names it: one code


def body_limit(size: Size) -> Callable[[View], View]:
    """Mark a view as taking a body of at most `size(settings)` bytes."""

    def mark(view: View) -> View:
        view.body_limit = size
        return view

    return mark


def image_bodies(count: int) -> Size:
    """The size of a body carrying `count` images, base64-encoded, plus its options."""
    return lambda settings: count * (settings.max_image_bytes * 4 // 3 + PART_OVERHEAD) + SMALL_BODY


ONE_IMAGE, BATCH = image_bodies(1), image_bodies(MAX_BATCH)


def dataset_body(settings: Settings) -> int:
    """A dataset archive, as the raw body or a multipart file, plus its name."""
    return settings.max_dataset_bytes + SMALL_BODY


def register_body_limits(app: Flask) -> None:
    """Set each request's limit from its view, and refuse a declared length over it."""

    @app.before_request
    def limit_body() -> None:
        limit = route_limit(app)
        declared = request.content_length
        if declared is not None and declared > limit:
            raise too_large(f"the body is {declared:,} bytes", limit)
        if declared is None:  # chunked: counted as it is read
            request.environ["wsgi.input"] = CappedStream(request.environ["wsgi.input"], limit)
            # Werkzeug's own limited stream stops silently at its maximum: one byte more lets
            # it ask for the byte that tells a body over the limit from one at it.
            limit += 1
        request.max_content_length = limit


def route_limit(app: Flask) -> int:
    """This request's view's limit, under the app's `MAX_CONTENT_LENGTH` (the ceiling)."""
    view = app.view_functions.get(request.endpoint) if request.endpoint else None
    size = getattr(view, "body_limit", None)
    limit = size(services().settings) if size else SMALL_BODY
    ceiling = app.config["MAX_CONTENT_LENGTH"]
    return limit if ceiling is None else min(limit, ceiling)


def too_large(what: str, limit: int) -> ErrorResponse:
    """The 413 for this request's route."""
    where = f"{request.method} {request.path}"
    return ErrorResponse(413, TOO_LARGE, f"{what}; {where} takes at most {limit:,} bytes")


class CappedStream(io.RawIOBase):
    """A request body without a length (chunked) that raises the 413 once it passes `limit`."""

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self.stream, self.limit, self.seen = stream, limit, 0

    def readable(self) -> bool:
        """Always: it is a request body."""
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Fill `buffer` from the body; a 413 once more than `limit` bytes came."""
        data = self.stream.read(len(buffer))
        self.seen += len(data)
        if self.seen > self.limit:
            raise too_large("the chunked body is longer", self.limit)
        buffer[: len(data)] = data
        return len(data)
