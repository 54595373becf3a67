"""API keys: what an admin sends to make one, and the records the API answers with."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.schemas.base import Query, Strict, coded
from store.tables import ALL_SCOPES

KeyScope = Literal[ALL_SCOPES]  # type: ignore[valid-type]
TENANT = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class KeyCreate(Strict):
    """A new key: whose it is and what it may do."""

    tenant: str = Field(
        description="1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        pattern=TENANT,
        json_schema_extra=coded("invalid_tenant"),
    )
    scopes: list[KeyScope] = Field(
        min_length=1, description="what the key may do", json_schema_extra=coded("invalid_scopes")
    )
    name: str = Field(
        "",
        max_length=200,
        description="a label for people",
        json_schema_extra=coded("invalid_name"),
    )


class KeyListQuery(Query):
    """Whose keys to list."""

    tenant: str | None = Field(
        None,
        pattern=TENANT,
        description="only this tenant's keys (default: every key)",
        json_schema_extra=coded("invalid_tenant"),
    )


class KeyLinks(BaseModel):
    """Links (paths, or absolute with PUBLIC_URL)."""

    self: str


class ApiKey(BaseModel):
    """An API key's record: never the key itself, only its first characters."""

    id: str
    tenant: str
    name: str
    scopes: list[KeyScope]
    prefix: str = Field(description="the key's first characters, to recognise it")
    created_at: str
    last_used_at: str | None = Field(description="its last accepted request (null: never)")
    revoked_at: str | None = Field(description="when it was revoked (null: it is valid)")
    urls: KeyLinks


class NewApiKey(ApiKey):
    """A key just made: the record, and the key itself, shown in this answer only."""

    key: str = Field(description="the bearer token; shown once, stored only as a digest")


class KeyList(BaseModel):
    """Keys, newest first."""

    keys: list[ApiKey]
