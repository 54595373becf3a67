"""Who is calling: every route needs an API key (`Authorization: Bearer KEY`) with its scope.

Each view declares what it needs with `requires(scope)`, `any_key` or `public`; a view that
declares nothing needs an admin key, so a route added without thought fails closed. The key is
checked before the view runs: 401 (with `WWW-Authenticate: Bearer`) when it is missing, unknown
or revoked, 403 when it lacks the scope. Views read the caller's tenant with `tenant()`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from flask import Flask, g, request

from api.services import services
from core.errors import ErrorResponse
from store.api_keys import Caller
from store.tables import Scope

View = TypeVar("View", bound=Callable)
PUBLIC = "public"  # no key needed
ANY_KEY = "any"  # any valid key, whatever its scopes
REALM = 'Bearer realm="captioner"'
NO_KEY = (
    "no API key: send one in the header 'Authorization: Bearer KEY' (the captioner CLIs take "
    "--api-key KEY or the CAPTIONER_API_KEY environment variable; `captioner up` keeps an admin "
    "key in its data folder's api-key file, data/service/api-key after `make demo`)"
)


def requires(scope: Scope) -> Callable[[View], View]:
    """Mark a view as needing a key with `scope`."""

    def mark(view: View) -> View:
        view.required_scope = scope.value
        return view

    return mark


def any_key(view: View) -> View:
    """Mark a view as open to any valid key (the shared model registry)."""
    view.required_scope = ANY_KEY
    return view


def public(view: View) -> View:
    """Mark a view as needing no key (health checks)."""
    view.required_scope = PUBLIC
    return view


def required_scope(app: Flask, endpoint: str | None) -> str | None:
    """What a view needs (admin when it declares nothing); None for no view (404 or 405)."""
    view = app.view_functions.get(endpoint) if endpoint else None
    if view is None:
        return None
    return getattr(view, "required_scope", Scope.ADMIN.value)


def register_auth(app: Flask) -> None:
    """Check the key before every view."""

    @app.before_request
    def authenticate() -> None:
        needed = required_scope(app, request.endpoint)
        if needed in (None, PUBLIC):
            return
        g.caller = caller = identify(request.headers.get("Authorization", ""))
        if needed != ANY_KEY and needed not in caller.scopes:
            raise ErrorResponse(
                403,
                "forbidden",
                f"this key lacks the {needed!r} scope; it has {sorted(caller.scopes)}",
            )


def identify(header: str) -> Caller:
    """The caller of a `Bearer` header, or a 401."""
    scheme, _, key = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ErrorResponse(
            401,
            "unauthorized",
            NO_KEY,
            headers={"WWW-Authenticate": REALM},
        )
    caller = services().keys.caller(key.strip())
    if caller is None:
        challenge = f'{REALM}, error="invalid_token"'
        raise ErrorResponse(
            401,
            "unauthorized",
            "the API key is unknown or revoked",
            headers={"WWW-Authenticate": challenge},
        )
    return caller


def tenant() -> str:
    """The caller's tenant: the owner of everything this request reads or makes."""
    return g.caller.tenant


def is_admin() -> bool:
    """Whether the caller's key has the admin scope."""
    return Scope.ADMIN.value in g.caller.scopes
