"""What every request and answer model is made of.

- `Problem`: the one error document (RFC 9457, with the API's stable `code`).
- `Strict`: a JSON request model. Unknown fields are refused by name, and values are taken as
  the JSON types they are documented as, never converted: 3.0 is not a whole number, "3" not a
  number, true not 1.
- `TextFields`: a request model whose values arrive as text (form fields, query parameters):
  each is first read as its field's type (whole numbers in ASCII digits, decimal numbers, a
  list from a repeated or single field); an empty form field counts as left out.
- `coded(...)`: the error code a field's bad values get (`x-error-code` in the document), and
  `refused(...)`: a rule across fields, raised with its own code.

This package is the bottom of `api/`: it imports nothing from the rest of it.
"""

from __future__ import annotations

import enum
import re
import types
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError
from spectree.model_adapter.pydantic_adapter import BaseFile
from werkzeug.datastructures import FileStorage

MAX_URL_CHARS = 2048
WHOLE = re.compile(r"[+-]?[0-9]+")
NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
CODES: set[str] = set()  # the codes `refused` raises: an error of one of these types is ours


class Problem(BaseModel):
    """Every error (RFC 9457 problem details), with the API's stable `code`; some carry more
    fields (a dataset's `problems`, the `running` jobs that block a delete)."""

    model_config = ConfigDict(extra="allow")
    type: str = Field("about:blank", description="always about:blank: `code` says what it is")
    title: str = Field(description="the HTTP status phrase")
    status: int = Field(description="the HTTP status")
    detail: str = Field(description="what went wrong, for people")
    code: str = Field(description="what went wrong, for programs: stable")


NO_NUL = "^[^\\u0000]*$"  # the pattern every text field is documented with


def nul_free_text(schema: dict[str, Any]) -> None:
    """Document the NUL rule: each text property (a list's items, a union's members) that has
    no pattern, format or fixed values gets the pattern NO_NUL."""

    def mark(prop: dict[str, Any]) -> None:
        for member in prop.get("anyOf", ()):
            mark(member)
        if isinstance(prop.get("items"), dict):
            mark(prop["items"])
        if prop.get("type") == "string" and not {"pattern", "format", "enum", "const"} & set(prop):
            prop["pattern"] = NO_NUL

    for prop in schema.get("properties", {}).values():
        mark(prop)


def documented_rules(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """What the document says beyond the fields' types: no NUL in any text, and no null in a
    text model's values. One hook for both: a subclass's own `json_schema_extra` would not
    reach models that also inherit from another Strict model (JobForm, BatchForm)."""
    if issubclass(model, TextFields):
        without_nulls(schema)
    nul_free_text(schema)


class Strict(BaseModel):
    """A JSON request model: unknown fields refused by name, values never converted, and no
    text with a NUL character (Postgres cannot store one: it was a 500), which the document
    says with a pattern on every text field."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=documented_rules)

    @model_validator(mode="before")
    @classmethod
    def no_nul(cls, values: Any) -> Any:
        """Refuse a NUL character anywhere in the request's text, names included."""
        if has_nul(values):
            raise refused("invalid_text", "text may not contain NUL (\\u0000) characters")
        return values


def has_nul(value: Any) -> bool:
    """Whether a NUL character is in any text of a JSON-like value (keys too)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(key) or has_nul(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(has_nul(item) for item in value)
    return False


def without_nulls(schema: dict[str, Any]) -> None:
    """Text is never null: drop null from each property's documented types."""
    for prop in schema.get("properties", {}).values():
        members = [m for m in prop.get("anyOf", ()) if m != {"type": "null"}]
        if "anyOf" in prop:
            del prop["anyOf"]
            prop.update(members[0] if len(members) == 1 else {"anyOf": members})
        if "default" in prop and prop["default"] is None:
            del prop["default"]


class TextFields(Strict):
    """A request model whose values arrive as text (form fields, query parameters)."""

    empty_is_absent: ClassVar[bool] = True  # an HTML form sends its empty fields

    @model_validator(mode="before")
    @classmethod
    def read_text(cls, values: Any) -> Any:
        """Each value as its field's type; empty ones left out (their defaults apply)."""
        if not isinstance(values, dict):
            return values
        read = {}
        for name, value in values.items():
            if cls.empty_is_absent and value in ("", []):
                continue
            field = cls.model_fields.get(name)
            read[name] = value if field is None else as_kind(value, kind(field.annotation))
        return read


def kind(annotation: Any) -> Any:
    """What a field holds, for reading text: int, float, ("list", kind) or anything else."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return kind(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        return kind(members[0]) if len(members) == 1 else object
    if origin is list:
        return ("list", kind(get_args(annotation)[0]))
    return annotation


def as_kind(value: Any, wanted: Any) -> Any:
    """`value` (text, a list of text, a file) read as `wanted`; left as it is when it does not
    read, so that the field refuses it with its own message."""
    if isinstance(wanted, tuple):
        return [
            as_kind(item, wanted[1]) for item in (value if isinstance(value, list) else [value])
        ]
    if not isinstance(value, str):
        return value
    if wanted is int and WHOLE.fullmatch(value):
        return int(value)
    if wanted is float and NUMBER.fullmatch(value):
        return float(value)
    if isinstance(wanted, type) and issubclass(wanted, enum.Enum):
        return next((member for member in wanted if member.value == value), value)
    return value


class Query(TextFields):
    """A query-string model (its unknown names are `unknown_parameter`); `?name=` is a value
    like any other, and must pass as one."""

    empty_is_absent: ClassVar[bool] = False


class NoQuery(Query):
    """No query parameters."""


def coded(code: str, item: str | None = None, **schema: Any) -> dict[str, Any]:
    """A field's `json_schema_extra` declaring the error code its bad values get (`item`: of a
    bad item of a list, when that differs), and more JSON Schema."""
    return {"x-error-code": code, **({"x-item-error-code": item} if item else {}), **schema}


def refused(code: str, message: str) -> PydanticCustomError:
    """A refusal by a rule across fields: a 400 with `code` and `message`."""
    CODES.add(code)
    return PydanticCustomError(code, message)


def http_url(url: str) -> str:
    """An http:// or https:// URL with a host (the SSRF guard checks where it leads)."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in ("http", "https") or not rest.split("/", 1)[0].strip():
        raise ValueError("must be an http:// or https:// URL")
    return url


def uploaded_file(value: Any) -> FileStorage:
    """A multipart file part, not a text field of the same name."""
    if not isinstance(value, FileStorage):
        raise ValueError("must be a file (a multipart part with a filename)")
    return value


WebUrl = Annotated[str, Field(max_length=MAX_URL_CHARS), AfterValidator(http_url)]
Upload = Annotated[BaseFile, AfterValidator(uploaded_file)]


def split_names(value: Any) -> Any:
    """Names as a list: comma-separated text, or a list of names (each may hold commas)."""
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, str) for item in items):
        return value  # the list type refuses it
    return [name.strip() for item in items for name in item.split(",") if name.strip()]


def event_names(allowed: tuple[str, ...], default: tuple[str, ...]) -> Any:
    """The type of `webhook_events`: names from `allowed`, as a list or comma-separated text,
    kept in `allowed`'s order; none given is `default`."""
    listed = {"type": "array", "items": {"enum": list(allowed), "type": "string"}}
    text = {"type": "string", "description": "comma-separated names"}
    return Annotated[
        list[Literal[allowed]],  # type: ignore[valid-type]
        BeforeValidator(split_names),
        AfterValidator(lambda names: [e for e in allowed if e in names] or list(default)),
        WithJsonSchema({"anyOf": [listed, text]}),
    ]
