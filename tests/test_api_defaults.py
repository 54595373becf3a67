"""What /openapi.json says a field defaults to is what the service applies.

The document is walked for every request field with a `default` (query parameters, and body
properties of every media type, nested objects and union members included). For each, a probe
sends a request that leaves the field out and reads back, from the answer or the record it
made, the value the service used. A default the document gains without a probe here fails the
first test, so a new field cannot skip the check.

A `null` default means "not set" (the answer shows none), or, where the field's description
says so in words, the rule it names (a run's promotion, model, learning rate and webhook secret
grace). A default that depends on the run's decoder is documented per decoder
(`x-default-by-decoder`), and each decoder's is probed too.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from api.schemas.training import ModelAsked
from tests.helpers import b64, png, succeeded_job, write_dataset

HOOK = "https://example.com/hook"  # the tests' resolver resolves no name: it passes at submit
IMAGE_URL = "https://example.com/cat.png"
SHAPES = {"dataset": {"type": "shapes", "size": 20}}


def resolve(document: dict, schema: dict) -> dict:
    """A schema with its `$ref`s followed."""
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def body_defaults(document: dict, schema: dict, prefix: str = "") -> dict[str, Any]:
    """Field path → default, for a body schema and the objects within it; a union member's
    fields are named `field(Member).name`."""
    found = {}
    for name, prop in resolve(document, schema).get("properties", {}).items():
        if "default" in prop:
            found[prefix + name] = prop["default"]
        target = resolve(document, prop)
        members = target.get("anyOf") or target.get("oneOf") or [target]
        for member in members:
            if "$ref" not in member and "properties" not in member:
                continue
            label = f"({member['$ref'].rsplit('/', 1)[1]})" if len(members) > 1 else ""
            found |= body_defaults(document, member, f"{prefix}{name}{label}.")
    return found


def documented_defaults(document: dict) -> dict[tuple[str, str, str], Any]:
    """(operation, where, field) → its documented default, `where` being `query` or a body's
    media type."""
    found = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            name = f"{method.upper()} {path}"
            for parameter in operation.get("parameters", []):
                if "default" in parameter.get("schema", {}):
                    found[name, "query", parameter["name"]] = parameter["schema"]["default"]
            for media, content in operation.get("requestBody", {}).get("content", {}).items():
                for field, default in body_defaults(document, content["schema"]).items():
                    found[name, media, field] = default
    return found


# Submitting jobs and batches, as JSON and as forms: each probe sends its operation's minimal
# submission (one image) without the field, plus what the field's effect needs to be seen.

JSON, FORM = "application/json", "multipart/form-data"


def submit(client, path: str, media: str, fields: dict) -> dict:
    """POST a one-image job or batch with `fields` (an image of its own unless they name a URL)."""
    batch = path == "/v1/batches"
    if media == JSON:
        image = (
            {}
            if "image_url" in fields or "image_urls" in fields
            else ({"images": [b64(png())]} if batch else {"image": b64(png())})
        )
        response = client.post(path, json=image | fields)
    else:
        upload = {"images" if batch else "image": (io.BytesIO(png()), "a.png")}
        response = client.post(path, data=upload | fields, content_type=FORM)
    assert response.status_code in (200, 202), response.get_json()
    answer = response.get_json()
    return answer["jobs"][0] | {"batch": answer} if batch else answer


def job_probe(extra: dict, read: Callable[[dict], Any]) -> Callable:
    """A probe of a submission field: submit with `extra`, read the first job."""
    return lambda client, path, media: read(submit(client, path, media, extra))


SUBMISSION = {
    "beam_size": job_probe({}, lambda job: job["options"]["beam_size"]),
    "max_length": job_probe({}, lambda job: job["options"]["max_length"]),
    "temperature": job_probe({}, lambda job: job["options"]["temperature"]),
    "seed": job_probe({}, lambda job: job["options"]["seed"]),
    "deadline_s": job_probe({}, lambda job: job["deadline_at"]),
}
JOB = SUBMISSION | {
    "webhook": job_probe({}, lambda job: job["webhook"]),
    "webhook_events": job_probe({"webhook": HOOK}, lambda job: job["webhook"]["events"]),
    "image": job_probe(
        {"image_url": IMAGE_URL}, lambda job: None if job["image"]["bytes"] == 0 else "uploaded"
    ),
    "image_url": job_probe({}, lambda job: job["image"].get("url")),
}
BATCH = SUBMISSION | {
    "webhook": job_probe({}, lambda job: job["batch"]["webhook"]),
    "webhook_events": job_probe({"webhook": HOOK}, lambda job: job["batch"]["webhook"]["events"]),
    "images": job_probe(
        {"image_urls": [IMAGE_URL]}, lambda job: None if job["image"]["bytes"] == 0 else "uploaded"
    ),
    "image_urls": job_probe({}, lambda job: job["image"].get("url")),
}
FORM_FIELDS = ("beam_size", "max_length", "temperature", "webhook_events")


def start_run(client, body: dict) -> dict:
    """POST a training run (the shapes set unless `body` names a dataset); its answer."""
    response = client.post("/v1/training-runs", json=SHAPES | body)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def run_probe(body: dict, read: Callable[[dict], Any]) -> Callable:
    """A probe of a training run's field: start a run with `body`, read its answer."""
    return lambda client, *_: read(start_run(client, body))


def architecture_by_rule(run: dict) -> Any:
    """A fresh run without `model` trains the default architecture (null: as documented)."""
    return None if run["model"] == ModelAsked().model_dump() else run["model"]


def promotion_by_rule(run: dict) -> Any:
    """Without `promotion`, an admin key's run promotes if better (the tests' key is admin)."""
    return None if run["promotion"] == {"policy": "if_better", "metric": "bleu4"} else run


def by_decoder(document: dict) -> dict[str, dict[str, Any]]:
    """Hyperparameter → {decoder: its documented default}, for those that depend on the
    decoder."""
    properties = document["components"]["schemas"]["Hyperparameters"]["properties"]
    key = "x-default-by-decoder"
    return {name: p[key] for name, p in properties.items() if key in p}


def hyperparameters_by_rule(client, *_) -> dict[str, Any]:
    """A run's hyperparameters (not `monitor`), each one that depends on the decoder null when
    it is the run's decoder's documented default (as its description says in words)."""
    run = start_run(client, {})
    chosen = {k: v for k, v in run["hyperparameters"].items() if k != "monitor"}
    documented = by_decoder(client.get("/openapi.json").get_json())
    decoder = run["model"]["decoder"]
    return chosen | {n: None for n, d in documented.items() if chosen[n] == d[decoder]}


RUN = {
    "base_version": run_probe({}, lambda run: run["base_version"]),
    "promotion": run_probe({}, promotion_by_rule),
    "promotion(PromotionAsked).metric": run_probe(
        {"promotion": {"policy": "never"}}, lambda run: run["promotion"]["metric"]
    ),
    "webhook": run_probe({}, lambda run: run["webhook"]),
    "webhook_events": run_probe({"webhook": HOOK}, lambda run: run["webhook"]["events"]),
    "feedback": run_probe({}, lambda run: run["dataset"].get("feedback")),
    "model": run_probe({}, architecture_by_rule),
    "hyperparameters": hyperparameters_by_rule,
    "hyperparameters.learning_rate": lambda c, *_: hyperparameters_by_rule(c)["learning_rate"],
}
for _name in ("epochs", "batch_size", "vocab_size", "seed", "patience"):
    RUN[f"hyperparameters.{_name}"] = run_probe({}, lambda run, n=_name: run["hyperparameters"][n])
for _name in ModelAsked.model_fields:
    RUN[f"model(ModelAsked).{_name}"] = run_probe(
        {"model": {}}, lambda run, n=_name: run["model"][n]
    )
for _set, _label in (("shapes", "ShapesSet"), ("scenes", "ScenesSet")):
    for _name in ("size", "seed"):
        RUN[f"dataset({_label}).{_name}"] = run_probe(
            {"dataset": {"type": _set}}, lambda run, n=_name: run["dataset"][n]
        )


def feedback_weight(client, *_) -> int:
    """A run that learns from corrections without naming a weight (it needs one correction)."""
    job_id = succeeded_job(client.application, None)
    client.post(f"/v1/jobs/{job_id}/feedback", json={"caption": "a blue square"})
    return start_run(client, {"feedback": {}})["dataset"]["feedback"]["weight"]


def grace_by_rule(client, *_) -> Any:
    """Without `grace_seconds` the old secret stays valid for the WEBHOOK_SECRET_GRACE_S
    setting (null: as documented)."""
    rotated = client.post("/v1/webhooks/secret/rotate").get_json()
    stamp = [datetime.fromisoformat(rotated["created_at"].replace("Z", "+00:00"))]
    stamp.append(
        datetime.fromisoformat(rotated["previous"][0]["expires_at"].replace("Z", "+00:00"))
    )
    grace = (stamp[1] - stamp[0]).total_seconds()
    setting = client.application.extensions["captioner"].settings.webhook_secret_grace_s
    return None if abs(grace - setting) < 2 else grace


def page_size(client, path: str, make: Callable[[Any], None]) -> int:
    """How many rows a list answers with its default page: 51 are made first."""
    make(client)
    key = path.rsplit("/", 1)[1]
    return len(client.get(path).get_json()[key])


def fifty_one_jobs(client) -> None:
    """51 URL jobs, as one batch (nothing to store)."""
    response = client.post("/v1/batches", json={"image_urls": [IMAGE_URL] * 51})
    assert response.status_code == 202, response.get_json()


def fifty_one_corrections(client) -> None:
    """51 caption corrections."""
    for _ in range(51):
        job_id = succeeded_job(client.application, None)
        client.post(f"/v1/jobs/{job_id}/feedback", json={"caption": "a red circle"})


def attention_form(client, *_) -> str:
    """The form a succeeded job's attention comes in without `format`."""
    job_id = succeeded_job(client.application, b"\x93NUMPY")
    response = client.get(f"/v1/jobs/{job_id}/attention")
    return {"application/octet-stream": "npy", "application/json": "json"}[response.mimetype]


def dataset_name(client, *_) -> str:
    """The name of a dataset uploaded as the raw body without `?name=`."""
    from core.archives import pack_dataset

    folder = write_dataset(client.application.extensions["captioner"].settings.data_dir / "ds")
    archive = pack_dataset(folder, folder.with_suffix(".zip")).read_bytes()
    response = client.post("/v1/datasets", data=archive, content_type="application/zip")
    assert response.status_code == 201, response.get_json()
    return response.get_json()["name"]


def key_name(client, *_) -> str:
    """The name of a key made without one."""
    response = client.post(
        "/v1/keys", json={"tenant": f"t-{uuid.uuid4().hex[:8]}", "scopes": ["jobs"]}
    )
    return response.get_json()["name"]


PROBES: dict[tuple[str, str, str], Callable] = {
    **{("POST /v1/jobs", JSON, f): p for f, p in JOB.items()},
    **{("POST /v1/jobs", FORM, f): JOB[f] for f in FORM_FIELDS},
    **{("POST /v1/batches", JSON, f): p for f, p in BATCH.items()},
    **{("POST /v1/batches", FORM, f): BATCH[f] for f in FORM_FIELDS},
    **{("POST /v1/training-runs", JSON, f): p for f, p in RUN.items()},
    ("POST /v1/training-runs", JSON, "feedback(FeedbackUse).weight"): feedback_weight,
    ("GET /v1/jobs", "query", "limit"): lambda c, *_: page_size(c, "/v1/jobs", fifty_one_jobs),
    ("GET /v1/feedback", "query", "limit"): lambda c, *_: page_size(
        c, "/v1/feedback", fifty_one_corrections
    ),
    ("GET /v1/jobs/{job_id}/attention", "query", "format"): attention_form,
    ("POST /v1/webhooks/secret/rotate", JSON, "grace_seconds"): grace_by_rule,
    ("POST /v1/datasets", "query", "name"): dataset_name,
    ("POST /v1/keys", JSON, "name"): key_name,
}


@pytest.fixture(scope="module")
def document(app) -> dict:
    """The app's /openapi.json."""
    return app.test_client().get("/openapi.json").get_json()


def test_every_documented_default_has_a_probe(document):
    documented = documented_defaults(document)
    assert "beam_size" in {field for _, _, field in documented}  # the walk finds the body's
    assert set(documented) == set(PROBES)


@pytest.mark.parametrize("key", sorted(PROBES), ids=" ".join)
def test_the_service_applies_each_documented_default(client, document, key):
    operation, media, field = key
    path = operation.split(" ", 1)[1]
    assert PROBES[key](client, path, media) == documented_defaults(document)[key]


def test_each_decoder_gets_its_documented_defaults(client, document):
    documented = by_decoder(document)
    assert documented["learning_rate"] == {"gru": 1e-3, "transformer": 5e-4}  # issue 29
    decoders = resolve(document, document["components"]["schemas"]["ModelAsked"])
    for decoder in decoders["properties"]["decoder"]["enum"]:
        run = start_run(client, {"model": {"decoder": decoder}})
        assert {n: run["hyperparameters"][n] for n in documented} == {
            n: d[decoder] for n, d in documented.items()
        }
