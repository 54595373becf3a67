"""/v1/training-runs: start a run on the training queue, follow it, cancel it."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, jsonify, request

from api.auth import is_admin, requires, tenant
from api.contract import Problem, contract
from api.errors import found
from api.idempotency import creates_resource
from api.schemas import training as shapes
from api.services import services
from api.uploads import parse_webhook, refuse_unknown
from core.errors import ErrorResponse
from core.formats import CAPTION_METRICS
from store import datasets, feedback, registry, training
from store.payloads import iso, run_json
from store.tables import Scope, utcnow

bp = Blueprint("training", __name__, url_prefix="/v1/training-runs")
# name: (default, lowest, highest); whole numbers unless the default is a float
HYPERPARAMETERS = {
    "epochs": (10, 1, 1000),
    "batch_size": (64, 1, 1024),
    "learning_rate": (1e-3, 1e-7, 1.0),
    "vocab_size": (5000, 10, 50_000),  # kept from the base model's vocabulary when there is one
    "seed": (0, 0, 2**31 - 1),
    "patience": (3, 1, 1000),  # early stopping: epochs without a better validation metric
}
GENERATED = {"size": (1000, 20, 100_000), "seed": (0, 0, 2**31 - 1)}  # the synthetic sets
SYNTHETIC = ("shapes", "scenes")  # sets the training worker generates (model/shapes, scenes)
# The decoder's architecture for a fresh run. These mirror model/config.py's ModelConfig (its
# defaults) and what it can build; the API may not import model/, so they are kept here.
DECODERS = ("gru", "transformer")
MODEL = {
    "embedding_dim": (256, 16, 1024),  # the Transformer's width too: divisible by heads
    "units": (512, 16, 2048),  # GRU state
    "attention_units": (512, 16, 2048),  # GRU's Bahdanau attention
    "layers": (2, 1, 8),  # Transformer blocks
    "heads": (1, 1, 16),
    "ff_units": (1024, 16, 8192),
    "dropout": (0.1, 0.0, 0.9),
}
FEEDBACK = {"weight": (1, 1, 100)}  # each correction counts as `weight` training captions
POLICIES = ("never", "always", "if_better")
DEFAULT_METRIC = "bleu4"


@bp.post("")
@contract(
    shapes.TrainingRun,
    status=201,
    json=shapes.RunCreate,
    more={409: Problem, 422: Problem},
    tags=["training"],
)
@requires(Scope.TRAINING)
@creates_resource
def start_run():
    """Check the request, record the run, put it on the training queue: 201."""
    body = request_json()
    known = {
        "dataset",
        "hyperparameters",
        "base_version",
        "promotion",
        "webhook",
        "webhook_events",
        "feedback",
        "model",
    }
    refuse_unknown(body, known, "field")
    promotion = parse_promotion(body.get("promotion"))
    hyperparameters = parse_numbers(
        body.get("hyperparameters"), HYPERPARAMETERS, "hyperparameters", "hyperparameter"
    ) | {"monitor": promotion["metric"]}
    with services().db.session() as session:
        dataset, dataset_id = parse_dataset(session, body.get("dataset"))
        dataset |= parse_feedback(session, body.get("feedback"))
        base = parse_base(session, body.get("base_version"))
        hyperparameters |= parse_model(body.get("model"), base)
        new = training.NewRun(
            owner=tenant(),
            dataset=dataset,
            dataset_id=dataset_id,
            hyperparameters=hyperparameters,
            base_version=base,
            promotion=promotion,
            **webhook_fields(body),
        )
        body = run_json(training.create_run(session, new))
    sent = services().broker.runs([uuid.UUID(body["id"])])
    with services().db.session() as session:
        training.mark_enqueued(session, sent)
    return jsonify(body), 201, {"Location": body["urls"]["self"]}


def request_json() -> dict[str, Any]:
    """The body as a JSON object, or a 415/400 saying what to send."""
    if request.mimetype != "application/json":
        raise ErrorResponse(415, "unsupported_media_type", "send a JSON object (application/json)")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ErrorResponse(400, "invalid_json", "the body must be a JSON object")
    return body


def parse_feedback(session, value: Any) -> dict[str, Any]:
    """{"feedback": {weight, corrections, until}} when the run learns from the tenant's caption
    corrections (those made until now), else {}; a 400 when there is none to learn from."""
    if value is None:
        return {}
    use = parse_numbers(value, FEEDBACK, "feedback", "feedback field")
    until = utcnow()
    count = feedback.count_feedback(session, tenant(), before=until)
    if not count:
        raise ErrorResponse(
            400,
            "invalid_feedback",
            "there are no caption corrections to learn "
            "from yet: send some with POST /v1/jobs/{id}/feedback",
        )
    return {"feedback": use | {"corrections": count, "until": iso(until)}}


def parse_numbers(values: Any, limits: dict[str, tuple], where: str, field: str) -> dict[str, Any]:
    """Numbers within their limits, defaults filled in, or a 400 naming the bad one."""
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ErrorResponse(400, f"invalid_{where}", f"{where} must be a JSON object")
    refuse_unknown(values, set(limits), field)
    parsed = {}
    for name, (default, low, high) in limits.items():
        value = values.get(name, default)
        kinds = (int, float) if isinstance(default, float) else (int,)
        if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
            kind = "a number" if isinstance(default, float) else "a whole number"
            raise ErrorResponse(
                400, f"invalid_{where}", f"{where}.{name} must be {kind} from {low:g} to {high:g}"
            )
        parsed[name] = value
    return parsed


def parse_model(value: Any, base: int | None) -> dict[str, Any]:
    """{"model": the decoder's architecture, defaults filled in} for a fresh run; {} for a
    fine-tune (it keeps its base version's), which may not send one; a 400 naming a bad field."""
    if base is not None:
        if value is not None:
            raise ErrorResponse(
                400,
                "invalid_model",
                "a fine-tune keeps its base version's "
                "architecture: leave model out with a base_version",
            )
        return {}
    value = {} if value is None else value
    if not isinstance(value, dict):
        raise ErrorResponse(400, "invalid_model", "model must be a JSON object")
    unknown = sorted(set(value) - set(MODEL) - {"decoder"})
    if unknown:
        raise ErrorResponse(
            400,
            "invalid_model",
            f"unknown model settings {unknown}; known: {sorted([*MODEL, 'decoder'])}",
        )
    decoder = value.get("decoder", DECODERS[0])
    if decoder not in DECODERS:
        raise ErrorResponse(400, "invalid_model", f"model.decoder must be one of {DECODERS}")
    sizes = {name: amount for name, amount in value.items() if name != "decoder"}
    sizes = parse_numbers(sizes, MODEL, "model", "model setting")
    if sizes["embedding_dim"] % sizes["heads"]:
        raise ErrorResponse(
            400,
            "invalid_model",
            f"model.embedding_dim ({sizes['embedding_dim']})"
            f" must be divisible by model.heads ({sizes['heads']})",
        )
    return {"model": {"decoder": decoder, **sizes}}


def parse_promotion(value: Any) -> dict[str, Any]:
    """{"policy", "metric"}: never, always, or if_better on a validation metric. The fleet is
    shared, so only an admin key's run may promote; other runs default to "never"."""
    value = {"policy": "if_better" if is_admin() else "never"} if value is None else value
    if isinstance(value, str):
        value = {"policy": value}
    if not isinstance(value, dict) or value.get("policy") not in POLICIES:
        raise ErrorResponse(400, "invalid_promotion", f"promotion.policy must be one of {POLICIES}")
    if value["policy"] != "never" and not is_admin():
        raise ErrorResponse(
            403,
            "forbidden",
            "only an admin key's run may promote the version "
            'it trains; send "promotion": "never" and ask an admin to promote '
            "it",
        )
    refuse_unknown(value, {"policy", "metric"}, "promotion field")
    metric = value.get("metric", DEFAULT_METRIC)
    if metric not in CAPTION_METRICS:
        raise ErrorResponse(
            400, "invalid_promotion", f"promotion.metric must be one of {CAPTION_METRICS}"
        )
    return {"policy": value["policy"], "metric": metric}


def parse_dataset(session, value: Any) -> tuple[dict[str, Any], uuid.UUID | None]:
    """A built-in synthetic set (shapes, scenes) with its size and seed, or an uploaded
    dataset's id (which must exist)."""
    if not isinstance(value, dict) or value.get("type") not in (*SYNTHETIC, "upload"):
        raise ErrorResponse(
            400,
            "invalid_dataset",
            'dataset must be {"type": "shapes", "size": N}'
            ', {"type": "scenes", "size": N} or {"type": "upload", "id": '
            "DATASET_ID}",
        )
    if value["type"] in SYNTHETIC:
        spec = {k: v for k, v in value.items() if k != "type"}
        return {"type": value["type"], **parse_numbers(spec, GENERATED, "dataset", "dataset")}, None
    refuse_unknown(value, {"type", "id"}, "dataset field")
    try:
        dataset_id = uuid.UUID(str(value.get("id")))
    except ValueError:
        raise ErrorResponse(400, "invalid_dataset", "dataset.id must be a dataset's id") from None
    found = datasets.get_dataset(session, dataset_id, owner=tenant())
    if found is None:
        raise ErrorResponse(400, "invalid_dataset", f"no dataset {dataset_id}; upload one first")
    return {"type": "upload", "id": str(dataset_id), "name": found.name}, dataset_id


def parse_base(session, value: Any) -> int | None:
    """A registered version to start from ("v3"), or None."""
    if value is None:
        return None
    number = registry.version_number(str(value))
    if number is None or registry.get_version(session, number) is None:
        raise ErrorResponse(400, "invalid_base_version", f"no model version {value!r}")
    return number


def webhook_fields(body: dict) -> dict[str, Any]:
    """webhook_url and webhook_events (start, progress, completed) for the run, if asked."""
    parsed = parse_webhook(body, training.EVENTS)
    if not parsed:
        return {}
    return {"webhook_url": parsed["webhook_url"], "webhook_events": list(parsed["webhook_events"])}


@bp.get("")
@contract(shapes.TrainingRunList, tags=["training"])
@requires(Scope.TRAINING)
def list_runs():
    """The newest runs first (up to 100)."""
    with services().db.session() as session:
        return jsonify(
            {"training_runs": [run_json(r) for r in training.list_runs(session, tenant())]}
        )


@bp.get("/<uuid:run_id>")
@contract(shapes.TrainingRun, tags=["training"])
@requires(Scope.TRAINING)
def get_run(run_id: uuid.UUID):
    """One run: status, progress, validation history, the version it produced."""
    with services().db.session() as session:
        return jsonify(run_json(find_run(session, run_id)))


@bp.post("/<uuid:run_id>/cancel")
@contract(shapes.TrainingRun, more={202: shapes.TrainingRun, 409: Problem}, tags=["training"])
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


def find_run(session, run_id: uuid.UUID):
    """The caller's run or a 404."""
    return found(training.get_run(session, run_id, owner=tenant()), "training_run", run_id)
