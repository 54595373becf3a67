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
from functools import cache
from typing import Any, get_args

from flask import Flask, current_app, jsonify, make_response, request
from flask_swagger_ui import get_swaggerui_blueprint
from pydantic import BaseModel, ValidationError
from spectree import Response, SecurityScheme, SecuritySchemeData, SpecTree
from spectree.metadata import FunctionDecorator
from spectree.model_adapter.pydantic_adapter import PydanticModelAdapter
from spectree.plugins.flask_plugin import FlaskPlugin
from spectree.utils import get_multidict_items

from api.auth import public
from api.errors import PROBLEM
from api.openapi_links import with_links
from api.schemas.base import CODES, NoQuery, Problem, Query, Strict, TextFields
from core.errors import ErrorResponse

ERROR_STATUSES = (400, 401, 403, 404, 413, 415, 429, 503)  # any route may answer these
BEARER = "bearer"
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


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
    """spectree's Flask plugin. Before validating, a body in a media type the view does not
    read is a 415, and JSON that does not parse (or is not an object) a 400 `invalid_json`:
    spectree would validate `{}` in their place. Answers are handed on as they are: described,
    not checked at run time, so their bodies are not read back and re-wrapped (files stream)."""

    def request_validation(self, request, query, json, form, headers, cookies):
        if json is not None:
            if query is not None:  # the query's errors come first, whatever the body
                self.model_adapter.validate_obj(query, get_multidict_items(request.args, query))
            check_media_type(request, json, form)
        super().request_validation(request, query, json, form, headers, cookies)

    def validate_response(self, resp, resp_model, skip_validation, force_resp_serialize):
        return make_response(resp), None


spec = SpecTree(
    "flask",
    backend=Plugin,
    title="captioner",
    version="1",
    # Markdown: Swagger UI (/docs/) shows it at the top, so its links lead back to the web page.
    description="Image captions with the attention behind every word: submit images, read "
    "jobs, get signed webhooks, train and roll out new models.\n\n"
    "The web page: [the jobs page](/) and [the training page](/training).",
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
    form: type[TextFields] | None = None,
    more: dict[int, type[BaseModel] | None] | None = None,
    files: dict[int, tuple[str, ...]] | None = None,
    tags: Iterable[str] = (),
    open_to_all: bool = False,
    body_required: bool = True,
) -> Callable:
    """Validate a view's query and body and describe it: `ok` answers with `status`; `more`
    are other answers, `files` answers that are files (status to media types, beside `ok`'s
    JSON if given); every view may answer the ERROR_STATUSES with a Problem.
    `body_required=False`: the body may be left out. The view reads what passed with
    `validated()`."""
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
        view.body_optional = True
        validated = validate(view)
        spec.get_function_metadata(validated).__class__ = OptionalBody
        return validated

    return optional_body


class OptionalBody(FunctionDecorator):
    """A view's metadata whose request body may be left out (`body_required=False`)."""

    def parse_request(self) -> dict[str, Any]:
        return super().parse_request() | {"required": False}


def validated() -> Any:
    """This request's body as its model validated it (JSON or form), or None without one."""
    context = request.context
    return context.json if context.json is not None else context.form


def validated_query() -> Any:
    """This request's query string as its model validated it."""
    return request.context.query


JSON = "application/json"
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def check_media_type(request, json: type[Strict], form: type[TextFields] | None) -> None:
    """A 415 for a body the view does not read (saying what it reads), a 400 `invalid_json` for
    JSON that is not an object; an optional body may be left out altogether."""
    if request.mimetype == JSON:
        if not isinstance(request.get_json(silent=True), dict):
            raise ErrorResponse(400, "invalid_json", "the body must be a JSON object")
        return
    if form is not None and request.mimetype in FORM_TYPES:
        return
    view = current_app.view_functions.get(request.endpoint)
    if not request.mimetype and not request.content_length and hasattr(view, "body_optional"):
        return
    wanted = [f"{JSON} ({summary(json)})"] + (
        [f"{FORM_TYPES[0]} ({summary(form)})"] if form else []
    )
    raise ErrorResponse(415, "unsupported_media_type", f"send {' or '.join(wanted)}")


def summary(model: type[BaseModel]) -> str:
    """The first paragraph of a model's docstring, on one line, without its full stop."""
    return " ".join((model.__doc__ or model.__name__).split("\n\n")[0].split()).rstrip(".")


def refuse_invalid(request, response, error: ValidationError | None, *_) -> None:
    """spectree's hook before the view: a refused request becomes the API's 400."""
    if error is not None:
        raise ErrorResponse(400, *explain(error))


def explain(error: ValidationError) -> tuple[str, str]:
    """The code and message for what a request model refused: unknown names first, then a
    rule's own code (`refused`), then the first field's (`x-error-code`)."""
    model = MODELS.get(error.title)
    problems = error.errors(include_url=False)
    unknown = [p["loc"] for p in problems if p["type"] == "extra_forbidden"]
    if unknown:
        what = "parameter" if model is not None and issubclass(model, Query) else "field"
        names = sorted(place(walk(model, loc[:-1])[0] + [loc[-1]]) for loc in unknown)
        holders = walk(model, unknown[0][:-1])[1]
        known = sorted({name for holder in holders for name in holder.model_fields})
        return f"unknown_{what}", f"unknown {what}s {names}; known: {known}"
    first = problems[0]
    if first["type"] in CODES:
        return first["type"], first["msg"]
    if not first["loc"]:
        return "invalid_json", "the body must be a JSON object"
    message = f"{place(walk(model, first['loc'])[0])}: {first['msg']}"
    field = model.model_fields.get(str(first["loc"][0])) if model is not None else None
    about = field.description if field is not None else None
    return error_code(model, first["loc"]), f"{message} ({about})" if about else message


def walk(model: type[BaseModel] | None, loc: tuple) -> tuple[list, list[type[BaseModel]]]:
    """A pydantic location as the API names it (without the labels pydantic gives a union's
    members), and the models that may hold its next part."""
    holders, named = [model] if model is not None else [], []
    for part in loc:
        fields = [h.model_fields[part] for h in holders if part in h.model_fields]
        if isinstance(part, int):
            named.append(part)
        elif fields:
            named.append(part)
            holders = [m for field in fields for m in models_in(field.annotation)]
        else:  # a union member's label: a discriminator's value, or a member's class name
            holders = [h for h in holders if part in (h.__name__, tag(h))] or holders
    return named, holders


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The request models a field's type holds (through Optional, unions, lists, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in models_in(arg)]


def tag(model: type[BaseModel]) -> Any:
    """A union member's discriminator value (its `type` literal), if it has one."""
    field = model.model_fields.get("type")
    values = get_args(field.annotation) if field is not None else ()
    return values[0] if len(values) == 1 else None


def place(loc: list | tuple) -> str:
    """A location as the API names it: images[1], hyperparameters.epochs."""
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


def register_contract(app: Flask) -> None:
    """Serve the OpenAPI document at /openapi.json and Swagger UI at /docs/ (flask-swagger-ui:
    its page and scripts come from this app, no CDN)."""

    @cache  # made at the first request, once every route is registered
    def document() -> dict[str, Any]:
        return with_links(spec.spec)

    @app.get("/openapi.json")
    @public
    def openapi():
        """The OpenAPI 3.1 description of every route, with links from what creates to what
        reads, changes or deletes what it made."""
        return jsonify(document())

    config = {"app_name": "captioner API", "persistAuthorization": True}
    app.register_blueprint(get_swaggerui_blueprint("/docs", "/openapi.json", config, None, "docs"))
    public(app.view_functions["docs.show"])
