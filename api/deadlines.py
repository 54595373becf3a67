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
from typing import Any

from core.errors import ErrorResponse

MAX_DEADLINE_S = 7 * 24 * 3600  # a week
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = r"\d+(?:\.\d+)?"
_PART = re.compile(rf"({_NUMBER})(ms|h|m|s)")
_DURATION = re.compile(rf"(?:{_NUMBER}(?:ms|h|m|s))+")
TAKES = {
    "Cancel-After": "a duration above 0 and at most 7 days, such as 30s, 5m, 1h30m, 500ms or 90 "
    "(seconds)",
    "deadline_s": f"a number of seconds above 0 and at most {MAX_DEADLINE_S} (7 days)",
}


def parse_duration(text: str) -> float:
    """Seconds in a duration: `90` (seconds), `500ms`, `30s`, `5m`, `1h`, `1h30m`; ValueError."""
    text = text.strip()
    if re.fullmatch(_NUMBER, text):
        return float(text)
    if not _DURATION.fullmatch(text):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(number) * UNITS[unit] for number, unit in _PART.findall(text))


def parse_deadline(field: Any, header: str | None, now: datetime) -> datetime | None:
    """When a submission's jobs must have started, from `deadline_s` or `Cancel-After`, or None;
    a 400 `invalid_deadline` when either is malformed or out of bounds."""
    seconds = None
    if header is not None:
        seconds = _bounded(_header_seconds(header), "Cancel-After")
    if field is not None and field != "":
        seconds = _bounded(_field_seconds(field), "deadline_s")
    return now + timedelta(seconds=seconds) if seconds is not None else None


def _header_seconds(header: str) -> float | None:
    try:
        return parse_duration(header)
    except ValueError:
        return None


def _field_seconds(field: Any) -> float | None:
    if isinstance(field, bool) or not isinstance(field, int | float | str):
        return None
    try:
        return float(field)
    except (ValueError, OverflowError):  # not a number; an integer too large for a float
        return None


def _bounded(seconds: float | None, name: str) -> float:
    """`seconds` if finite and within the bounds, else the 400 naming what `name` takes."""
    if seconds is None or not math.isfinite(seconds) or not 0 < seconds <= MAX_DEADLINE_S:
        raise ErrorResponse(400, "invalid_deadline", f"{name} must be {TAKES[name]}")
    return seconds
