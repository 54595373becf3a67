"""The API's typed contract (spectree + pydantic): `contract(...)` on a view validates its query
and body against pydantic models before the view runs, and the same models describe it in the
OpenAPI 3.1 document at /openapi.json, rendered at /docs by Swagger UI served from this app.

A request the models refuse gets the API's one error shape (api.errors, RFC 9457) with a stable
`code`: `unknown_field` / `unknown_parameter` naming what the API does not know, or the code a
field declares as `x-error-code` (else `invalid_request`). Responses are described, not checked
at run time: the schemathesis run in the tests checks every answer against them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, jsonify, make_response
from flask_swagger_ui import get_swaggerui_blueprint
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from spectree import Response, SecurityScheme, SecuritySchemeData, SpecTree
from spectree.metadata import FunctionDecorator
from spectree.model_adapter.pydantic_adapter import PydanticModelAdapter
from spectree.plugins.flask_plugin import FlaskPlugin

from api.auth import public
from api.errors import PROBLEM
from core.errors import ErrorResponse

ERROR_STATUSES = (400, 401, 403, 404, 413, 415, 429, 503)  # any route may answer these
BEARER = "bearer"
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


class Problem(BaseModel):
    """Every error (RFC 9457 problem details), with the API's stable `code`; some carry more
    fields (a dataset's `problems`, the `running` jobs that block a delete)."""

    model_config = ConfigDict(extra="allow")
    type: str = Field("about:blank", description="always about:blank: `code` says what it is")
    title: str = Field(description="the HTTP status phrase")
    status: int = Field(description="the HTTP status")
    detail: str = Field(description="what went wrong, for people")
    code: str = Field(description="what went wrong, for programs: stable")


class Strict(BaseModel):
    """A request model: fields the API does not know are refused by name."""

    model_config = ConfigDict(extra="forbid")


class Query(Strict):
    """A query-string model (its unknown names are `unknown_parameter`)."""


class NoQuery(Query):
    """No query parameters."""


class Described(Response):
    """Documents a view's answers: JSON models, problem documents, and files by media type
    (`files`: status code to media types). `Plugin` hands the view's answer on unchecked."""

    def __init__(self, files: dict[int, tuple[str, ...]], **code_models) -> None:
        super().__init__(
            *(f"HTTP_{code}" for code in files if f"HTTP_{code}" not in code_models), **code_models
        )
        self.files = files

    def generate_spec(self, naming_strategy=None) -> dict[str, Any]:
        responses = super().generate_spec(naming_strategy or spec.naming_strategy)
        for code, media_types in self.files.items():
            binary = {"schema": {"type": "string", "format": "binary"}}
            content = responses[str(code)].setdefault("content", {})  # JSON too, if a model
            content |= {media: binary for media in media_types}
        for answer in responses.values():
            content = answer.get("content", {})
            if content.get("application/json", {}).get("schema") == PROBLEM_REF:
                answer["content"] = {PROBLEM: content["application/json"]}
        return responses


class Adapter(PydanticModelAdapter):
    """spectree's pydantic adapter, whose error list leaves out the input (a file upload is not
    JSON); refuse_invalid answers from the ValidationError itself."""

    def validation_errors(self, err: ValidationError) -> Any:
        return err.errors(include_input=False, include_context=False, include_url=False)


class Plugin(FlaskPlugin):
    """spectree's Flask plugin, handing the view's answer on as it is: answers are described,
    not checked at run time, so their bodies are not read back and re-wrapped (files stream)."""

    def validate_response(self, resp, resp_model, skip_validation, force_resp_serialize):
        return make_response(resp), None


spec = SpecTree(
    "flask",
    backend=Plugin,
    title="captioner",
    version="1",
    description="Image captions with the attention behind every word: submit images, read "
    "jobs, get signed webhooks, train and roll out new models.",
    mode="strict",  # only views under `contract` are described
    annotations=False,
    naming_strategy=lambda model: model.__name__,
    nested_naming_strategy=lambda parent, child: child,
    security_schemes=[
        SecurityScheme(name=BEARER, data=SecuritySchemeData(type="http", scheme="bearer"))
    ],
    security={BEARER: []},
    validation_error_status=400,
    validation_error_model=Problem,
    model_adapter=Adapter(),
)
MODELS: dict[str, type[BaseModel]] = {}  # request models by name, to find a field's error code


def contract(
    ok: type[BaseModel] | None = None,
    *,
    status: int = 200,
    query: type[Query] = NoQuery,
    json: type[Strict] | None = None,
    form: type[Strict] | None = None,
    more: dict[int, type[BaseModel] | None] | None = None,
    files: dict[int, tuple[str, ...]] | None = None,
    tags: Iterable[str] = (),
    open_to_all: bool = False,
    body_required: bool = True,
) -> Callable:
    """Validate a view's query and body and describe it: `ok` answers with `status`; `more`
    are other answers, `files` answers that are files (status to media types, beside `ok`'s
    JSON if given); every view may answer the ERROR_STATUSES with a Problem.
    `body_required=False`: the body may be left out."""
    for model in (query, json, form):
        if model is not None:
            MODELS[model.__name__] = model
    files = files or {}
    answers = {f"HTTP_{status}": ok} if ok is not None or status not in files else {}
    answers |= {f"HTTP_{s}": m for s, m in (more or {}).items()}
    answers |= {f"HTTP_{s}": Problem for s in ERROR_STATUSES if f"HTTP_{s}" not in answers}
    validate = spec.validate(
        query=query,
        json=json,
        form=form,
        resp=Described(files, **answers),
        tags=list(tags),
        before=refuse_invalid,
        security={} if open_to_all else None,
    )
    if body_required:
        return validate

    def optional_body(view: Callable) -> Callable:
        validated = validate(view)
        spec.get_function_metadata(validated).__class__ = OptionalBody
        return validated

    return optional_body


class OptionalBody(FunctionDecorator):
    """A view's metadata whose request body may be left out (`body_required=False`)."""

    def parse_request(self) -> dict[str, Any]:
        return super().parse_request() | {"required": False}


def refuse_invalid(request, response, error: ValidationError | None, *_) -> None:
    """spectree's hook before the view: a refused request becomes the API's 400."""
    if error is not None:
        refuse_unreadable_json(request, MODELS.get(error.title))
        raise ErrorResponse(400, *explain(error))


FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def refuse_unreadable_json(request, model: type[BaseModel] | None) -> None:
    """A JSON body model refused a body that is not JSON at all (spectree validates `{}` in its
    place): a 415, or a 400 `invalid_json` for JSON that does not parse (or nests too deep), as
    the views say it, not a missing field."""
    if model is None or issubclass(model, Query) or request.mimetype in FORM_TYPES:
        return
    if request.mimetype != "application/json":
        raise ErrorResponse(415, "unsupported_media_type", "send a JSON object (application/json)")
    if not isinstance(request.get_json(silent=True), dict | list):
        raise ErrorResponse(400, "invalid_json", "the body must be a JSON object")


def explain(error: ValidationError) -> tuple[str, str]:
    """The code and message for what a request model refused."""
    model = MODELS.get(error.title)
    problems = error.errors(include_url=False)
    unknown = sorted(str(p["loc"][0]) for p in problems if p["type"] == "extra_forbidden")
    if unknown:
        what = "parameter" if model is not None and issubclass(model, Query) else "field"
        known = sorted(model.model_fields) if model is not None else []
        return f"unknown_{what}", f"unknown {what}s {unknown}; known: {known}"
    first = problems[0]
    if not first["loc"]:
        return "invalid_json", "the body must be a JSON object"
    message = f"{place(first['loc'])}: {first['msg']}"
    field = model.model_fields.get(str(first["loc"][0])) if model is not None else None
    about = field.description if field is not None else None
    return error_code(model, first["loc"]), f"{message} ({about})" if about else message


def place(loc: tuple) -> str:
    """A pydantic location as the API names it: images[1], hyperparameters.epochs."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)[1:]


def error_code(model: type[BaseModel] | None, loc: tuple) -> str:
    """The code a field declares (`x-item-error-code` for one of its items, when it has one),
    else `invalid_request`."""
    field = model.model_fields.get(str(loc[0])) if model is not None else None
    extra = field.json_schema_extra if field is not None else None
    if not isinstance(extra, dict):
        return "invalid_request"
    item = len(loc) > 1 and isinstance(loc[1], int) and extra.get("x-item-error-code")
    return item or extra.get("x-error-code", "invalid_request")


def coded(code: str, item: str | None = None, **schema: Any) -> dict[str, Any]:
    """A field's `json_schema_extra` declaring the error code its bad values get (`item`: of a
    bad item of a list, when that differs), and more JSON Schema (checked by the view)."""
    return {"x-error-code": code, **({"x-item-error-code": item} if item else {}), **schema}


def register_contract(app: Flask) -> None:
    """Serve the OpenAPI document at /openapi.json and Swagger UI at /docs/ (flask-swagger-ui:
    its page and scripts come from this app, no CDN)."""

    @app.get("/openapi.json")
    @public
    def openapi():
        """The OpenAPI 3.1 description of every route."""
        return jsonify(spec.spec)

    config = {"app_name": "captioner API", "persistAuthorization": True}
    app.register_blueprint(get_swaggerui_blueprint("/docs", "/openapi.json", config, None, "docs"))
    public(app.view_functions["docs.show"])
