"""The client's one exception tree.

    CaptionerError                  anything this client raises on its own account
    ├── ApiError                    the API answered 4xx or 5xx (an RFC 9457 problem body)
    └── WebhookVerificationError    a webhook not signed by the secret, or signed too long ago
                                    (defined in captioner_client._webhooks)

A connection that still fails after its retries raises httpx's own `httpx.TransportError`; a
wait that runs out raises the built-in `TimeoutError`.
"""

from __future__ import annotations

from typing import Any


class CaptionerError(Exception):
    """Base of the client's errors."""


class ApiError(CaptionerError):
    """An error answer: its HTTP status, the problem's stable `code`, its `detail`, the body."""

    def __init__(self, status: int, code: str, detail: str, problem: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail, self.problem = status, code, detail, problem
