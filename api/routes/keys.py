"""/v1/keys: an admin makes, lists and revokes the API keys of any tenant."""

from __future__ import annotations

import re
import uuid

from flask import Blueprint, jsonify, request

from api.auth import requires
from api.contract import Problem, contract
from api.errors import found
from api.idempotency import creates_resource
from api.routes.training import request_json
from api.schemas import keys as shapes
from api.services import services
from api.uploads import refuse_unknown
from core.errors import ErrorResponse
from store import api_keys
from store.payloads import key_json
from store.tables import ALL_SCOPES, Scope

bp = Blueprint("keys", __name__, url_prefix="/v1/keys")
TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SCOPES = list(ALL_SCOPES)


@bp.post("")
@contract(
    shapes.NewApiKey,
    status=201,
    json=shapes.KeyCreate,
    more={409: Problem, 422: Problem},
    tags=["keys"],
)
@requires(Scope.ADMIN)
@creates_resource
def create_key():
    """A new key for `tenant` with `scopes`: 201, the key shown in this answer only."""
    body = request_json()
    refuse_unknown(body, {"tenant", "scopes", "name"}, "field")
    tenant, scopes, name = body.get("tenant"), body.get("scopes"), body.get("name", "")
    check_tenant(tenant)
    if (
        not isinstance(scopes, list)
        or not scopes
        or not all(isinstance(s, str) and s in SCOPES for s in scopes)
    ):
        raise ErrorResponse(400, "invalid_scopes", f"scopes must be a list of some of {SCOPES}")
    if not isinstance(name, str) or len(name) > 200:
        raise ErrorResponse(400, "invalid_name", "name must be text of at most 200 characters")
    with services().db.session() as session:
        row, key = api_keys.create_key(session, tenant, scopes, name)
        body = key_json(row) | {"key": key}
    return jsonify(body), 201, {"Location": body["urls"]["self"]}


@bp.get("")
@contract(shapes.KeyList, query=shapes.KeyListQuery, tags=["keys"])
@requires(Scope.ADMIN)
def list_keys():
    """Every key (newest first), or one tenant's with `?tenant=`; never the keys themselves."""
    tenant = request.args.get("tenant")
    if tenant is not None:
        check_tenant(tenant)  # one no key can have (a NUL is not even SQL text): a 400
    with services().db.session() as session:
        rows = api_keys.list_keys(session, tenant)
        return jsonify({"keys": [key_json(row) for row in rows]})


def check_tenant(tenant) -> None:
    """A 400 unless `tenant` is a tenant's name."""
    if not isinstance(tenant, str) or not TENANT.fullmatch(tenant):
        raise ErrorResponse(
            400,
            "invalid_tenant",
            "tenant must be 1 to 64 letters, digits, "
            "'.', '_' or '-', starting with a letter or digit",
        )


@bp.get("/<uuid:key_id>")
@contract(shapes.ApiKey, tags=["keys"])
@requires(Scope.ADMIN)
def get_key(key_id: uuid.UUID):
    """One key's tenant, scopes, and when it was made, last used and revoked."""
    with services().db.session() as session:
        return jsonify(key_json(found(api_keys.get_key(session, key_id), "key", key_id)))


@bp.delete("/<uuid:key_id>")
@contract(shapes.ApiKey, tags=["keys"])
@requires(Scope.ADMIN)
def revoke_key(key_id: uuid.UUID):
    """Revoke a key: its next request gets 401."""
    with services().db.session() as session:
        return jsonify(key_json(found(api_keys.revoke(session, key_id), "key", key_id)))
