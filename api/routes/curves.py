"""/v1/training-runs/{id}/curves: a run's learning curves by epoch, as JSON or as a PNG."""

from __future__ import annotations

import io
import uuid
from typing import Any

from flask import Blueprint, jsonify, send_file

from api.auth import requires
from api.contract import contract
from api.lookups import find_run
from api.schemas import curves as schema
from api.schemas.training import DEFAULT_METRIC
from api.services import services
from core.plots import learning_curves, render_curves
from store.tables import Scope, TrainingRun

bp = Blueprint("curves", __name__, url_prefix="/v1/training-runs")


@bp.get("/<uuid:run_id>/curves")
@contract(schema.Curves, tags=["training"])
@requires(Scope.TRAINING)
def get_curves(run_id: uuid.UUID):
    """Per epoch: training loss, token accuracy and every validation metric, as columns."""
    history, metric = history_of(run_id)
    curves = learning_curves(history)
    return jsonify(
        {
            "run_id": str(run_id),
            "metric": metric,
            "epochs": curves.epochs,
            "loss": curves.loss,
            "accuracy": curves.accuracy,
            "metrics": curves.metrics,
            "urls": {
                "self": f"/v1/training-runs/{run_id}/curves",
                "png": f"/v1/training-runs/{run_id}/curves.png",
                "run": f"/v1/training-runs/{run_id}",
            },
        }
    )


@bp.get("/<uuid:run_id>/curves.png")
@contract(None, files={200: ("image/png",)}, tags=["training"])
@requires(Scope.TRAINING)
def get_curves_png(run_id: uuid.UUID):
    """The curves drawn: training loss (left axis), token accuracy and the run's validation
    metric (right axis, 0 to 1)."""
    buffer = io.BytesIO()
    render_curves(*history_of(run_id)).save(buffer, "PNG")
    buffer.seek(0)
    response = send_file(buffer, mimetype="image/png", download_name=f"{run_id}.curves.png")
    response.headers["Cache-Control"] = "no-store"  # a running run gains epochs
    return response


def history_of(run_id: uuid.UUID) -> tuple[list[dict], str]:
    """The caller's run's history and metric, or the 404 GET /v1/training-runs/{id} answers."""
    with services().db.session() as session:
        run = find_run(session, run_id)
        return run.history or [], run_metric(run)


def run_metric(run: TrainingRun) -> str:
    """The metric the run monitors (or promotes on), else the default."""
    chosen: dict[str, Any] = run.hyperparameters or {}
    return chosen.get("monitor") or (run.promotion or {}).get("metric") or DEFAULT_METRIC
