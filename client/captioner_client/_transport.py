"""Requests with retries: 429 and 503 after their `Retry-After`, connection errors where a retry
cannot do a thing twice, and the problem body of any other error raised as ApiError."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from captioner_client._errors import ApiError

RETRY_STATUSES = frozenset({429, 503})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
IN_USE = "idempotency_key_in_use"  # 409: the first try with this key still runs


@dataclass(frozen=True)
class RetryPolicy:
    """How hard a request is retried."""

    attempts: int = 5  # tries in all, the first included
    max_wait_s: float = 30.0  # a longer Retry-After is cut to this
    backoff_s: float = 0.5  # pause after a connection error (or without Retry-After), doubled


class Transport:
    """An httpx client on the API's base URL that sends the key and retries as `retry` says."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float,
        retry: RetryPolicy,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.retry = retry
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    def send(
        self, method: str, path: str, *, creates: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """Send one request (httpx keyword arguments), retrying; `creates`: a POST that makes
        something, sent with one `Idempotency-Key` for all its tries. Raises ApiError."""
        headers = dict(kwargs.pop("headers", None) or {})
        if creates:
            headers["Idempotency-Key"] = str(uuid.uuid4())
        safe = creates or method in IDEMPOTENT_METHODS
        for attempt in range(1, self.retry.attempts + 1):
            last = attempt == self.retry.attempts
            try:
                response = self.http.request(method, path, headers=headers, **kwargs)
            except httpx.TransportError as exc:
                never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if last or not (safe or never_sent):
                    raise  # a request that may have arrived is not sent twice
                time.sleep(self._backoff(attempt))
                continue
            if last or not self._retriable(response, creates):
                return raise_for_problem(response)
            time.sleep(self._pause(response, attempt))
        raise AssertionError("unreachable")

    def _retriable(self, response: httpx.Response, creates: bool) -> bool:
        if response.status_code in RETRY_STATUSES:
            return True
        in_use = response.status_code == 409 and problem_of(response).get("code") == IN_USE
        return creates and in_use

    def _pause(self, response: httpx.Response, attempt: int) -> float:
        """Seconds to wait: the answer's Retry-After (seconds), capped, else the backoff."""
        try:
            seconds = float(response.headers.get("Retry-After", ""))
        except ValueError:  # absent, or an HTTP date: the backoff is close enough
            return self._backoff(attempt)
        return min(max(seconds, 0.0), self.retry.max_wait_s)

    def _backoff(self, attempt: int) -> float:
        return min(self.retry.backoff_s * 2 ** (attempt - 1), self.retry.max_wait_s)

    def close(self) -> None:
        """Close the connections."""
        self.http.close()


def problem_of(response: httpx.Response) -> dict[str, Any]:
    """The RFC 9457 problem body of an error answer ({} when it is not JSON)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def raise_for_problem(response: httpx.Response) -> httpx.Response:
    """The response if it is not an error, else ApiError with the problem's code and detail."""
    if response.status_code < 400:
        return response
    problem = problem_of(response)
    detail = problem.get("detail") or response.text[:200]
    raise ApiError(response.status_code, problem.get("code", "?"), detail, problem)
