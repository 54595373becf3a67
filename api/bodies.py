"""Reading JSON bodies safely: any body Python's parser chokes on is bad JSON, never a 500.

Python's `json` parses `[[[[…` recursively: a body nested deeper than the recursion limit raises
RecursionError, which Flask does not treat as bad JSON. The provider turns it into ValueError, so
`request.get_json(silent=True)` returns None and each route answers its own 400.
"""

from __future__ import annotations

from typing import Any

from flask.json.provider import DefaultJSONProvider


class SafeJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider, reading nested-too-deep bodies as malformed."""

    sort_keys = False

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Parse `s`; ValueError for anything that is not JSON within the recursion limit."""
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None
