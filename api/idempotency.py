"""`Idempotency-Key` on the POSTs that create something, as Stripe defines it.

A view marked `creates_resource` may be sent `Idempotency-Key: K` (1 to 255 characters, per
tenant). The first request with K runs and its answer (2xx or 4xx) is kept for 24 h; the same
request again (method, path, query and body; a multipart body's boundary aside) gets that answer
again with `Idempotent-Replayed: true`. K with another request is a 422, K while its first
request still runs a 409 with `Retry-After: 1`. A 5xx or an exception records nothing, so a
retry runs afresh. The database row is the lock (store.idempotency): of 50 concurrent requests
with one key exactly one runs.
"""

from __future__ import annotations

import hashlib
import tempfile
from functools import partial

from flask import Flask, Response, current_app, g, request
from werkzeug.wsgi import get_input_stream

from api.auth import View, tenant
from api.services import services
from core.errors import ErrorResponse
from store import idempotency
from store.idempotency import Answer, Outcome

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255
REPLAYED_HEADERS = ("Location", "Content-Type")
CHUNK = 1 << 20
SPOOL_IN_MEMORY = 1 << 20  # a larger body waits for its view in a temporary file
IN_USE = f"a request with this {HEADER} is still being handled; retry in a second"
REUSED = (
    f"this {HEADER} was first used with another request (method, path, query or body); "
    "send a new key for a new request"
)


def creates_resource(view: View) -> View:
    """Mark a POST view as creating something: it honours `Idempotency-Key`."""
    view.creates = True
    return view


def register_idempotency(app: Flask) -> None:
    """Claim the key before a create view runs (after the auth hook); record or forget after."""

    @app.before_request
    def claim_key() -> Response | None:
        key = request.headers.get(HEADER)
        view = app.view_functions.get(request.endpoint) if request.endpoint else None
        if key is None or request.method != "POST" or not getattr(view, "creates", False):
            return None
        return claim(key)

    @app.after_request
    def record(response: Response) -> Response:
        if "idempotency_claim" in g:
            settle(response)
        return response

    @app.teardown_request
    def release(_exc: BaseException | None) -> None:
        if "idempotency_claim" in g:  # the answer was never recorded: let a retry run
            try:
                forget()
            except Exception:
                current_app.logger.exception("could not release an idempotency key")
        if (body := g.pop("idempotency_body", None)) is not None:
            body.close()


def claim(key: str) -> Response | None:
    """None when this request holds the key and runs; else the replay, or a 409 or 422."""
    if not 0 < len(key) <= MAX_KEY_CHARS:
        raise ErrorResponse(
            400, "invalid_idempotency_key", f"{HEADER} must be 1 to {MAX_KEY_CHARS} characters"
        )
    fingerprint = read_fingerprint()
    with services().db.session() as session:
        found = idempotency.begin(session, tenant(), key, fingerprint)
    if found.outcome is Outcome.STARTED:
        g.idempotency_claim = (key, found.started_at)
        return None
    if found.outcome is Outcome.REPLAY:
        return replay(found.answer)
    if found.outcome is Outcome.IN_USE:
        raise ErrorResponse(409, "idempotency_key_in_use", IN_USE, headers={"Retry-After": "1"})
    raise ErrorResponse(422, "idempotency_key_reused", REUSED)


def settle(response: Response) -> None:
    """Record a 2xx or 4xx answer for replay; forget the key after a 5xx."""
    if response.status_code >= 500:
        forget()
        return
    key, started_at = g.idempotency_claim
    headers = {
        name: response.headers[name] for name in REPLAYED_HEADERS if name in response.headers
    }
    # Encrypted: the answer to POST /v1/keys holds the new key, which no table may show.
    answer = Answer(response.status_code, headers, services().cipher.seal(response.get_data()))
    with services().db.session() as session:
        idempotency.finish(session, tenant(), key, started_at, answer)
    del g.idempotency_claim


def forget() -> None:
    """Delete this request's claim, so that a retry runs afresh."""
    key, started_at = g.idempotency_claim
    with services().db.session() as session:
        idempotency.forget(session, tenant(), key, started_at)
    del g.idempotency_claim


def replay(answer: Answer) -> Response:
    """The recorded answer again, marked as replayed."""
    body = services().cipher.unseal(answer.body)
    response = current_app.response_class(body, answer.status, answer.headers)
    response.headers["Idempotent-Replayed"] = "true"
    return response


def read_fingerprint() -> str:
    """sha256 of the method, path, query and body; the view still reads the body as sent."""
    head = f"{request.method} {request.path}?".encode() + request.query_string + b"\n"
    multipart = request.mimetype.startswith("multipart/")
    boundary = request.mimetype_params.get("boundary", "") if multipart else ""
    digest = BodyDigest(head, boundary.encode("latin-1"))
    g.idempotency_body = spool = tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY)
    stream = get_input_stream(request.environ, max_content_length=body_limit())
    for chunk in iter(partial(stream.read, CHUNK), b""):
        digest.update(chunk)
        spool.write(chunk)
    spool.seek(0)
    # Werkzeug builds `request.stream` from wsgi.input when the view first reads, applying the
    # same limit again.
    request.environ["wsgi.input"] = spool
    request.__dict__.pop("stream", None)
    return digest.hexdigest()


def body_limit() -> int | None:
    """The most this view accepts (api.body_limits set it before this hook ran)."""
    return request.max_content_length


class BodyDigest:
    """sha256 of a body with every multipart boundary left out: clients pick one per try."""

    def __init__(self, head: bytes, boundary: bytes) -> None:
        self.digest, self.boundary, self.carry = hashlib.sha256(head), boundary, b""

    def update(self, chunk: bytes) -> None:
        """Hash `chunk`, holding back a tail that may begin a boundary the next chunk ends."""
        if not self.boundary:
            self.digest.update(chunk)
            return
        data, start, size = self.carry + chunk, 0, len(self.boundary)
        while (at := data.find(self.boundary, start)) != -1:
            self.digest.update(data[start:at])
            start = at + size
        cut = max(start, len(data) - size + 1)
        self.digest.update(data[start:cut])
        self.carry = data[cut:]

    def hexdigest(self) -> str:
        """The digest of everything hashed so far, held-back tail included."""
        self.digest.update(self.carry)
        self.carry = b""
        return self.digest.hexdigest()
