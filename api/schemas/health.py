"""Health checks' answers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Health(BaseModel):
    """The process answers."""

    status: Literal["ok"]


class Readiness(BaseModel):
    """Whether the database, broker and blob store are all reachable."""

    status: Literal["ready", "unavailable"]
    failures: dict[str, str] | None = Field(None, description="what failed, by dependency")
