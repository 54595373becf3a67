"""/v1/keys: an admin makes, lists and revokes the API keys of any tenant."""

from __future__ import annotations

import uuid

from flask import Blueprint, jsonify

from api.auth import requires
from api.contract import contract, validated, validated_query
from api.errors import found
from api.idempotency import creates_resource
from api.schemas import keys as schema
from api.schemas.base import Problem
from api.services import services
from store import api_keys
from store.payloads import key_json
from store.tables import Scope

bp = Blueprint("keys", __name__, url_prefix="/v1/keys")


@bp.post("")
@contract(
    schema.NewApiKey,
    status=201,
    json=schema.KeyCreate,
    more={409: Problem, 422: Problem},
    tags=["keys"],
)
@requires(Scope.ADMIN)
@creates_resource
def create_key():
    """A new key for `tenant` with `scopes`: 201, the key shown in this answer only."""
    asked: schema.KeyCreate = validated()
    with services().db.session() as session:
        row, key = api_keys.create_key(session, asked.tenant, asked.scopes, asked.name)
        body = key_json(row) | {"key": key}
    return jsonify(body), 201, {"Location": body["urls"]["self"]}


@bp.get("")
@contract(schema.KeyList, query=schema.KeyListQuery, tags=["keys"])
@requires(Scope.ADMIN)
def list_keys():
    """Every key (newest first), or one tenant's with `?tenant=`; never the keys themselves."""
    with services().db.session() as session:
        rows = api_keys.list_keys(session, validated_query().tenant)
        return jsonify({"keys": [key_json(row) for row in rows]})


@bp.get("/<uuid:key_id>")
@contract(schema.ApiKey, tags=["keys"])
@requires(Scope.ADMIN)
def get_key(key_id: uuid.UUID):
    """One key's tenant, scopes, and when it was made, last used and revoked."""
    with services().db.session() as session:
        return jsonify(key_json(found(api_keys.get_key(session, key_id), "key", key_id)))


@bp.delete("/<uuid:key_id>")
@contract(schema.ApiKey, tags=["keys"])
@requires(Scope.ADMIN)
def revoke_key(key_id: uuid.UUID):
    """Revoke a key: its next request gets 401 (from another API process: within KEY_CACHE_S)."""
    with services().db.session() as session:
        revoked = key_json(found(api_keys.revoke(session, key_id), "key", key_id))
    services().keys.forget(key_id)
    return jsonify(revoked)
