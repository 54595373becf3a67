"""Deadlines: a job not started by its deadline is aborted instead of run.

A submission sets one with the `Cancel-After` header (a duration, as Replicate spells it: `90`
seconds, `500ms`, `30s`, `5m`, `1h`, `1h30m`) or the `deadline_s` field (seconds, a number). When
both come, both are checked and the field wins: it is the more specific of the two (a client
library may send the header on every request).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta

from api.schemas.jobs import MAX_DEADLINE_S
from core.errors import ErrorResponse

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = r"\d+(?:\.\d+)?"
_PART = re.compile(rf"({_NUMBER})(ms|h|m|s)")
_DURATION = re.compile(rf"(?:{_NUMBER}(?:ms|h|m|s))+")
HEADER_TAKES = (
    "Cancel-After must be a duration above 0 and at most 7 days, such as 30s, 5m, "
    "1h30m, 500ms or 90 (seconds)"
)


def parse_duration(text: str) -> float:
    """Seconds in a duration: `90` (seconds), `500ms`, `30s`, `5m`, `1h`, `1h30m`; ValueError."""
    text = text.strip()
    if re.fullmatch(_NUMBER, text):
        return float(text)
    if not _DURATION.fullmatch(text):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(number) * UNITS[unit] for number, unit in _PART.findall(text))


def parse_deadline(seconds: float | None, header: str | None, now: datetime) -> datetime | None:
    """When a submission's jobs must have started, or None: `deadline_s` (its schema checked
    it) wins over the `Cancel-After` header, which must be well formed all the same (a 400
    `invalid_deadline` otherwise)."""
    if header is not None:
        from_header = _bounded(_header_seconds(header))
        seconds = from_header if seconds is None else seconds
    return now + timedelta(seconds=seconds) if seconds is not None else None


def _header_seconds(header: str) -> float | None:
    try:
        return parse_duration(header)
    except ValueError:
        return None


def _bounded(seconds: float | None) -> float:
    """The header's `seconds` if finite and within the bounds, else the 400 saying what it
    takes."""
    if seconds is None or not math.isfinite(seconds) or not 0 < seconds <= MAX_DEADLINE_S:
        raise ErrorResponse(400, "invalid_deadline", HEADER_TAKES)
    return seconds
