"""Requests with retries: 429 and 503 after their `Retry-After`, connection errors where a retry
cannot do a thing twice (a refused connection for about a second only), and the problem body of
any other error raised as ApiError."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from captioner_client._config import missing_key_hint
from captioner_client._errors import ApiError, ServerUnreachable

RETRY_STATUSES = frozenset({429, 503})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
IN_USE = "idempotency_key_in_use"  # 409: the first try with this key still runs
CONNECT_TIMEOUT_S = 5.0  # a server that does not answer a connection in 5 s is not there
NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout)  # no byte of the request left


@dataclass(frozen=True)
class RetryPolicy:
    """How hard a request is retried."""

    attempts: int = 5  # tries in all, the first included
    max_wait_s: float = 30.0  # a longer Retry-After is cut to this
    backoff_s: float = 0.5  # pause after a connection error (or without Retry-After), doubled
    # A server that refuses connections is tried again only while this many seconds have not
    # passed since the first try (a restart takes about that long; a server that is down stays
    # down, and the caller is better told so at once).
    connect_budget_s: float = 1.0


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
        self.retry, self.keyless = retry, not api_key
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=with_connect_timeout(timeout),
            transport=transport,
        )

    def send(
        self, method: str, path: str, *, creates: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """Send one request (httpx keyword arguments), retrying; `creates`: a POST that makes
        something, sent with one `Idempotency-Key` for all its tries. Raises ApiError, or
        ServerUnreachable when no connection could be made."""
        headers = dict(kwargs.pop("headers", None) or {})
        if creates:
            headers["Idempotency-Key"] = str(uuid.uuid4())
        if isinstance(kwargs.get("timeout"), int | float):
            kwargs["timeout"] = with_connect_timeout(kwargs["timeout"])
        safe, started = creates or method in IDEMPOTENT_METHODS, time.monotonic()
        for attempt in range(1, self.retry.attempts + 1):
            last = attempt == self.retry.attempts
            try:
                response = self.http.request(method, path, headers=headers, **kwargs)
            except NEVER_SENT as exc:
                pause = self._backoff(attempt)
                if last or time.monotonic() + pause - started > self.retry.connect_budget_s:
                    raise ServerUnreachable(self.base_url, str(exc) or type(exc).__name__) from exc
                time.sleep(pause)
                continue
            except httpx.TransportError:
                if last or not safe:
                    raise  # a request that may have arrived is not sent twice
                time.sleep(self._backoff(attempt))
                continue
            if last or not self._retriable(response, creates):
                return raise_for_problem(response, self.keyless)
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


def with_connect_timeout(timeout: float) -> httpx.Timeout:
    """`timeout` seconds to read, write and wait for a pooled connection; at most
    CONNECT_TIMEOUT_S to connect."""
    return httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_S))


def raise_for_problem(response: httpx.Response, keyless: bool = False) -> httpx.Response:
    """The response if it is not an error, else ApiError with the problem's code and detail
    (a 401 to a request sent with no key (`keyless`) says how to give one)."""
    if response.status_code < 400:
        return response
    problem = problem_of(response)
    detail = problem.get("detail") or response.text[:200]
    hint = missing_key_hint() if keyless and response.status_code == 401 else ""
    raise ApiError(response.status_code, problem.get("code", "?"), detail, problem, hint)
