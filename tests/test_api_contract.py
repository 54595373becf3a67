"""The typed contract: /openapi.json describes every route, /docs/ works with no CDN, unknown
query parameters and body fields are refused by name on every route (every body, every media
type, every nested object), and errors have one shape."""

from __future__ import annotations

import re
import uuid

import pytest

# The contract itself; Prometheus' text; the web page (HTML, its scripts and styles). Each is a
# path and everything under it.
UNDESCRIBED = ("/openapi.json", "/docs", "/metrics", "/", "/training", "/web")


def described_routes(app) -> list[tuple[str, str]]:
    """(method, OpenAPI path) of every route the app serves, but the contract's own."""
    routes = []
    for rule in app.url_map.iter_rules():
        if any(str(rule) == path or str(rule).startswith(f"{path}/") for path in UNDESCRIBED):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", str(rule))
        routes += [(method, path) for method in rule.methods - {"HEAD", "OPTIONS"}]
    return sorted(routes)


def test_the_document_is_openapi_3_1_and_describes_every_route(client, app):
    response = client.get("/openapi.json", headers={"Authorization": ""})  # public
    assert response.status_code == 200
    document = response.get_json()
    assert document["openapi"] == "3.1.0"
    listed = sorted((m.upper(), p) for p, ops in document["paths"].items() for m in ops)
    assert listed == described_routes(app)
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert document["paths"]["/healthz"]["get"]["security"] == []  # public, and says so


def test_every_operation_documents_its_errors_as_problems(client):
    document = client.get("/openapi.json").get_json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            problem = operation["responses"]["400"]["content"]
            assert list(problem) == ["application/problem+json"], (method, path)


def test_the_docs_page_and_its_assets_come_from_the_api(client):
    page = client.get("/docs/", headers={"Authorization": ""})
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    links = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert links and all(link.startswith("/docs/") for link in links), links  # no CDN
    assert "/openapi.json" in html
    for link in links:
        asset = client.get(link, headers={"Authorization": ""})
        assert asset.status_code == 200 and asset.data, link
    assert b"SwaggerUIBundle" in client.get("/docs/swagger-ui-bundle.js").data


@pytest.mark.parametrize("colour", ["colour=red", "limit=5&colour=red"])
def test_unknown_query_parameters_are_refused_on_every_route(client, app, colour):
    for method, path in described_routes(app):
        url = re.sub(r"\{\w+\}", str(uuid.uuid4()), path)
        response = client.open(f"{url}?{colour}", method=method)
        problem = response.get_json()
        assert (response.status_code, problem["code"]) == (400, "unknown_parameter"), (
            method,
            path,
            problem,
        )
        assert "colour" in problem["detail"]


def test_an_error_is_a_problem_document(client):
    response = client.get(f"/v1/jobs/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": problem["detail"],
        "code": "job_not_found",
    }


def test_a_405_names_the_allowed_methods(client):
    response = client.put("/v1/jobs")
    assert response.status_code == 405
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}
    assert response.get_json()["code"] == "method_not_allowed"


UNKNOWN = "zz_unknown"


def request_bodies(document: dict):
    """(operation, media type, body schema) of every request body the document describes."""
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for media, content in operation.get("requestBody", {}).get("content", {}).items():
                yield f"{method.upper()} {path}", media, content["schema"]


def post_body(client, operation: str, media: str, body: dict):
    """Send `body` to `operation` (its path parameters made up) as JSON or as a form."""
    method, path = operation.split(" ", 1)
    url = re.sub(r"\{\w+\}", str(uuid.uuid4()), path)
    if media == "application/json":
        return client.open(url, method=method, json=body)
    return client.open(url, method=method, data=body, content_type=media)


def objects_within(document: dict, schema: dict, at: str = ""):
    """(location, object schema) of a body and of every object it holds (union members too)."""
    schema = resolve(document, schema)
    yield at, schema
    for name, prop in schema.get("properties", {}).items():
        target = resolve(document, prop)
        for member in target.get("anyOf") or target.get("oneOf") or [target]:
            if "$ref" in member or "properties" in member:
                yield from objects_within(document, member, f"{at}{name}.")


def resolve(document: dict, schema: dict) -> dict:
    """A schema with its `$ref`s followed."""
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def with_unknown(schema: dict, at: str):
    """A body whose object at `at` holds one unknown field (and a union member's tag)."""
    tags = {
        name: prop["const"]
        for name, prop in schema.get("properties", {}).items()
        if "const" in prop
    }
    body = tags | {UNKNOWN: 1}
    for name in reversed(at.rstrip(".").split(".") if at else []):
        body = {name: body}
    return body


def test_every_request_body_refuses_unknown_fields_at_every_depth(client):
    document = client.get("/openapi.json").get_json()
    tried = set()
    for operation, media, schema in request_bodies(document):
        for at, part in objects_within(document, schema):
            assert part.get("additionalProperties") is False, (operation, media, at)
            if media == "application/json":
                response = post_body(client, operation, media, with_unknown(part, at))
            elif not at:  # a form is flat
                response = post_body(client, operation, media, {UNKNOWN: "1"})
            else:
                continue
            problem = response.get_json()
            assert (response.status_code, problem["code"]) == (400, "unknown_field"), (
                operation,
                media,
                at,
                problem,
            )
            assert f"{at}{UNKNOWN}" in problem["detail"], problem
            tried.add((operation, at))
    assert ("POST /v1/webhooks/secret/rotate", "") in tried
    assert ("POST /v1/training-runs", "hyperparameters.") in tried
    assert ("POST /v1/training-runs", "dataset.") in tried  # each member of the union


def test_every_request_body_refuses_text_with_a_nul_character(client):
    document = client.get("/openapi.json").get_json()
    tried = set()
    for operation, media, schema in request_bodies(document):
        fields = resolve(document, schema).get("properties", {})
        text = [n for n, prop in fields.items() if resolve(document, prop).get("type") == "string"]
        if text:
            response = post_body(client, operation, media, {text[0]: "a\x00b"})
            problem = response.get_json()
            assert (response.status_code, problem["code"]) == (400, "invalid_text"), operation
            tried.add(operation)
    assert "POST /v1/keys" in tried  # the fuzzer's 500: Postgres refuses NUL in text


def test_every_request_model_refuses_unknown_fields_at_every_depth(app):
    from pydantic import BaseModel

    from api.contract import MODELS, models_in

    def nested(model: type[BaseModel]):
        yield model
        for field in model.model_fields.values():
            for inner in models_in(field.annotation):
                yield from nested(inner)

    assert {"RunCreate", "RotateSecret", "JobJson", "BatchForm", "DatasetForm"} <= set(MODELS)
    for model in {inner for top in MODELS.values() for inner in nested(top)}:
        assert model.model_config.get("extra") == "forbid", model
