"""/v1/training-runs: start a run on the training queue, follow it, cancel it."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, jsonify

from api.auth import is_admin, requires, tenant
from api.contract import contract, validated
from api.idempotency import creates_resource
from api.lookups import find_run
from api.schemas import training as schema
from api.schemas.base import Problem
from api.services import services
from api.submissions import webhook_of
from core.errors import ErrorResponse
from store import datasets, feedback, registry, training
from store.payloads import iso, run_json
from store.tables import ModelVersion, Scope, utcnow

bp = Blueprint("training", __name__, url_prefix="/v1/training-runs")


@bp.post("")
@contract(
    schema.TrainingRun,
    status=201,
    json=schema.RunCreate,
    more={409: Problem, 422: Problem},
    tags=["training"],
)
@requires(Scope.TRAINING)
@creates_resource
def start_run():
    """Record the run its schema passed, put it on the training queue: 201."""
    asked: schema.RunCreate = validated()
    promotion = promotion_of(asked.promotion)
    webhook_url, webhook_events = webhook_of(asked)
    with services().db.session() as session:
        dataset, dataset_id = dataset_of(session, asked.dataset)
        dataset |= feedback_of(session, asked.feedback)
        base = base_of(session, asked.base_version)
        if base is None:  # a fresh decoder: the architecture asked for, or the default one
            model = (asked.model or schema.ModelAsked()).model_dump()
            hyperparameters = asked.hyperparameters.applied(model["decoder"]) | {"model": model}
        else:  # a fine-tune keeps its base's architecture
            hyperparameters = asked.hyperparameters.applied(decoder_of(base))
        hyperparameters["monitor"] = promotion["metric"]
        new = training.NewRun(
            owner=tenant(),
            dataset=dataset,
            dataset_id=dataset_id,
            base_version=None if base is None else base.number,
            hyperparameters=hyperparameters,
            promotion=promotion,
            webhook_url=webhook_url,
            webhook_events=webhook_events,
        )
        body = run_json(training.create_run(session, new))
    sent = services().broker.runs([uuid.UUID(body["id"])])
    with services().db.session() as session:
        training.mark_enqueued(session, sent)
    return jsonify(body), 201, {"Location": body["urls"]["self"]}


def promotion_of(asked: str | schema.PromotionAsked | None) -> dict[str, Any]:
    """{"policy", "metric"}: never, always, or if_better on a validation metric. The fleet is
    shared, so only an admin key's run may promote; other runs default to "never"."""
    if asked is None:
        asked = "if_better" if is_admin() else "never"
    if isinstance(asked, str):
        asked = schema.PromotionAsked(policy=asked)
    if asked.policy != "never" and not is_admin():
        raise ErrorResponse(
            403,
            "forbidden",
            "only an admin key's run may promote the version "
            'it trains; send "promotion": "never" and ask an admin to promote '
            "it",
        )
    return asked.model_dump()


def feedback_of(session, asked: schema.FeedbackUse | None) -> dict[str, Any]:
    """{"feedback": {weight, corrections, until}} when the run learns from the tenant's caption
    corrections (those made until now), else {}; a 400 when there is none to learn from."""
    if asked is None:
        return {}
    until = utcnow()
    count = feedback.count_feedback(session, tenant(), before=until)
    if not count:
        raise ErrorResponse(
            400,
            "invalid_feedback",
            "there are no caption corrections to learn "
            "from yet: send some with POST /v1/jobs/{id}/feedback",
        )
    return {"feedback": asked.model_dump() | {"corrections": count, "until": iso(until)}}


def dataset_of(session, asked) -> tuple[dict[str, Any], uuid.UUID | None]:
    """A built-in synthetic set as asked (size and seed), or an uploaded dataset of the
    caller's, which must exist, with its id."""
    if not isinstance(asked, schema.UploadedSet):
        return asked.model_dump(), None
    try:
        dataset_id = uuid.UUID(asked.id)
    except ValueError:
        raise ErrorResponse(400, "invalid_dataset", "dataset.id must be a dataset's id") from None
    found = datasets.get_dataset(session, dataset_id, owner=tenant())
    if found is None:
        raise ErrorResponse(400, "invalid_dataset", f"no dataset {dataset_id}; upload one first")
    return {"type": "upload", "id": str(dataset_id), "name": found.name}, dataset_id


def base_of(session, asked: str | int | None) -> ModelVersion | None:
    """A registered version to start from ("v3"), or None."""
    if asked is None:
        return None
    number = registry.version_number(str(asked))
    version = None if number is None else registry.get_version(session, number)
    if version is None:
        raise ErrorResponse(400, "invalid_base_version", f"no model version {asked!r}")
    return version


def decoder_of(version: ModelVersion) -> str:
    """A version's decoder architecture (one whose bundle did not name it is a GRU)."""
    return (version.architecture or {}).get("decoder", "gru")


@bp.get("")
@contract(schema.TrainingRunList, tags=["training"])
@requires(Scope.TRAINING)
def list_runs():
    """The newest runs first (up to 100)."""
    with services().db.session() as session:
        return jsonify(
            {"training_runs": [run_json(r) for r in training.list_runs(session, tenant())]}
        )


@bp.get("/<uuid:run_id>")
@contract(schema.TrainingRun, tags=["training"])
@requires(Scope.TRAINING)
def get_run(run_id: uuid.UUID):
    """One run: status, progress, validation history, the version it produced."""
    with services().db.session() as session:
        return jsonify(run_json(find_run(session, run_id)))


@bp.post("/<uuid:run_id>/cancel")
@contract(schema.TrainingRun, more={202: schema.TrainingRun, 409: Problem}, tags=["training"])
@requires(Scope.TRAINING)
def cancel_run(run_id: uuid.UUID):
    """Cancel: at once if queued (200), at the next step if running (202); 409 once ended."""
    with services().db.session() as session:
        run = find_run(session, run_id)
        changed = training.cancel_run(session, run_id)
        if changed is None:
            raise ErrorResponse(409, "not_cancelable", f"the run is {run.status}")
        body = run_json(changed)
    return jsonify(body), 200 if body["status"] == "canceled" else 202
