"""Liveness and readiness."""

from __future__ import annotations

from flask import Blueprint, jsonify

from api.auth import public
from api.contract import contract
from api.schemas.health import Health, Readiness
from api.services import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@contract(Health, tags=["health"], open_to_all=True)
@public
def healthz():
    """The process answers."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
@contract(Readiness, more={503: Readiness}, tags=["health"], open_to_all=True)
@public
def readyz():
    """Database, broker and blob store all reachable: 200, else 503 naming the failures."""
    checks = {
        "database": services().db.check,
        "blob_store": services().blobs.check,
        "broker": services().broker.check,
    }
    failures = {}
    for name, check in checks.items():
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            failures[name] = f"{type(exc).__name__}: {exc}"[:300]
    if failures:
        return jsonify({"status": "unavailable", "failures": failures}), 503
    return jsonify({"status": "ready"})
