"""The client's one exception tree.

    CaptionerError                  anything this client raises on its own account
    ├── ApiError                    the API answered 4xx or 5xx (an RFC 9457 problem body)
    ├── ServerUnreachable           no connection to the API's URL (refused, no such host, no
    │                               answer within the connect timeout): .url, and how to start one
    └── WebhookVerificationError    a webhook not signed by the secret, or signed too long ago
                                    (defined in captioner_client._webhooks)

A connection that is refused is tried again for about a second only (RetryPolicy.connect_budget_s):
a server that is down stays down, and saying so at once is worth more than waiting. A request
that may have reached the server and then lost its connection raises httpx's own
`httpx.TransportError` (it is not sent twice); a wait that runs out raises the built-in
`TimeoutError`.
"""

from __future__ import annotations

from typing import Any

START_A_SERVER = (
    "Start one with `captioner up` (after `make demo`: `make up`, which serves the demo's model), "
    "or point the client at a running one (--api URL, CAPTIONER_API_URL, or Client(base_url))."
)


class CaptionerError(Exception):
    """Base of the client's errors."""


class ApiError(CaptionerError):
    """An error answer: its HTTP status, the problem's stable `code`, its `detail`, the body;
    `hint`, when the client knows better what to do (a 401 with no key sent), replaces the
    detail in the message."""

    def __init__(
        self, status: int, code: str, detail: str, problem: dict[str, Any], hint: str = ""
    ) -> None:
        super().__init__(f"{status} {code}: {hint or detail}")
        self.status, self.code, self.detail, self.problem = status, code, detail, problem


class ServerUnreachable(CaptionerError):
    """No connection could be made to the API at `url`; `reason` says why (httpx's words)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"no captioner API answers at {url} ({reason}). {START_A_SERVER}")
        self.url, self.reason = url, reason
