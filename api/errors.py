"""Every error has one shape: RFC 9457 problem details with a stable `code`, sent as
application/problem+json: {"type": "about:blank", "title", "status", "detail", "code", ...more}."""

from __future__ import annotations

from typing import TypeVar

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from core.errors import BlobStoreError, ErrorResponse, StoreUnavailable

T = TypeVar("T")
PROBLEM = "application/problem+json"
RETRY_AFTER_S = 5  # when a store is away: a restart or fail-over takes seconds


def found(row: T | None, what: str, row_id: object) -> T:
    """`row`, or a 404 `{what}_not_found` when there is none (another owner's row included)."""
    if row is None:
        raise ErrorResponse(404, f"{what}_not_found", f"no {what.replace('_', ' ')} {row_id}")
    return row


def error_response(status: int, code: str, message: str, **details):
    """The problem document and its status."""
    title = HTTP_STATUS_CODES.get(status, "Error")
    body = jsonify(
        {
            "type": "about:blank",
            "title": title,
            "status": status,
            "detail": message,
            "code": code,
            **details,
        }
    )
    body.mimetype = PROBLEM
    return body, status


def unavailable(code: str, what: str):
    """A 503 for a dependency that is away, with Retry-After: nothing was recorded."""
    body, status = error_response(503, code, f"{what}; try again shortly")
    return body, status, {"Retry-After": str(RETRY_AFTER_S)}


def register_error_handlers(app: Flask) -> None:
    """Turn ErrorResponse, HTTP errors and anything unexpected into JSON errors."""

    @app.errorhandler(ErrorResponse)
    def api_error(exc: ErrorResponse):
        body, status = error_response(exc.status, exc.code, exc.message, **exc.details)
        return body, status, exc.headers

    @app.errorhandler(StoreUnavailable)
    def store_unavailable(exc: StoreUnavailable):
        app.logger.warning("%s: %s", exc, exc.__cause__)
        return unavailable("database_unavailable", "the database cannot be reached")

    @app.errorhandler(BlobStoreError)
    def blob_store_unavailable(exc: BlobStoreError):
        app.logger.warning("the blob store cannot be used: %s", exc)
        return unavailable("blob_store_unavailable", "the blob store cannot be reached")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        body, status = error_response(exc.code or 500, code, exc.description or exc.name)
        headers = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]
        return body, status, headers  # a 405's Allow, for one

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        app.logger.exception("unhandled error")
        return error_response(500, "internal_error", "the server failed; the error was logged")
