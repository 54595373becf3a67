"""/v1/models: the registry's versions, promotion (and so rollback), and the workers' rollout."""

from __future__ import annotations

from flask import Blueprint, jsonify

from api.auth import any_key, requires
from api.contract import contract
from api.schemas import registry as schema
from api.services import services
from core.errors import ErrorResponse
from store import registry
from store.payloads import model_json, worker_json
from store.tables import Scope

bp = Blueprint("models", __name__, url_prefix="/v1")


@bp.get("/models")
@contract(schema.ModelList, tags=["models"])
@any_key
def list_models():
    """Every version, newest first, and which one is active."""
    with services().db.session() as session:
        versions = registry.list_versions(session)
        active = next((v.version for v in versions if v.active), None)
        return jsonify({"active": active, "models": [model_json(v) for v in versions]})


@bp.get("/models/<name>")
@contract(schema.ModelVersion, tags=["models"])
@any_key
def get_model(name: str):
    """One version: metrics, lineage, bundle, whether it is active."""
    with services().db.session() as session:
        return jsonify(model_json(find_version(session, name)))


@bp.post("/models/<name>/promote")
@contract(schema.ModelVersion, tags=["models"])
@requires(Scope.ADMIN)
def promote_model(name: str):
    """Make a version the active one; workers swap to it within seconds. Older: a rollback."""
    with services().db.session() as session:
        version = registry.promote(session, find_version(session, name).number)
        body = model_json(version)
    return jsonify(body)


@bp.get("/workers")
@contract(schema.WorkerList, tags=["models"])
@requires(Scope.ADMIN)
def list_workers():
    """Workers of every role still running (a recent heartbeat): heartbeat, tasks in flight,
    last error; for inference workers the version each one serves (or refused)."""
    within = registry.live_window_s(services().settings.model_poll_s)
    with services().db.session() as session:
        workers = registry.serving_workers(session, within)
        active = registry.active_version(session)
        return jsonify(
            {
                "active": active.version if active else None,
                "workers": [worker_json(w) for w in workers],
            }
        )


def find_version(session, name: str):
    """The version named "v3" (or "3"), or a 404."""
    number = registry.version_number(name)
    version = registry.get_version(session, number) if number is not None else None
    if version is None:
        raise ErrorResponse(404, "model_not_found", f"no model version {name!r}")
    return version
