"""Guards against overload: requests per API key (Flask-Limiter) and a bounded queue of jobs.

Rate limits count every request of a key, across all routes, in a fixed window per limit of
`settings.rate_limit` ("50/second;1200/minute"); over it the answer is a 429 `rate_limited`
with `Retry-After` (seconds until the window resets). The counts live in Redis in production
(the broker's, or `RATE_LIMIT_STORAGE`), so several API processes share one budget per key;
in memory in the embedded mode. Routes without a key (/healthz, /readyz) are not counted.

When the storage fails, requests are let through (fail open), each process counting on its own
in memory until Redis answers again (checked with backoff), and Flask-Limiter logs a warning:
the limits protect the service's capacity, so a Redis outage must not turn into refusing every
request, reads of finished jobs included. Short Redis timeouts keep a hung server from holding
requests.

Submissions are refused with a 503 `queue_full` (and `Retry-After`) before anything is stored
when the tenant's queued jobs plus the new ones would exceed `max_queued_per_tenant`, or all
queued jobs plus the new ones `max_queued_jobs`. The counts are read at most once a second
per process (`store.queue_counts`), plus what the process accepted since: the bounds are soft
by at most a second of the other API processes' submissions.
"""

from __future__ import annotations

import math
import time

from flask import Flask, g
from flask_limiter import Limiter, RateLimitExceeded
from limits import parse_many

from api.auth import tenant
from api.errors import error_response
from api.services import services
from core.errors import ErrorResponse, SettingsError
from core.settings import Settings

# Seconds a client waits before submitting again to a full queue: at the ~180 jobs/s one worker
# drains with a fast model (BENCHMARKS.md), 10 s frees ~1,800 places, a third of a tenant's
# share; sooner, retries (each a full upload) mostly find the queue still full.
QUEUE_FULL_RETRY_S = 10
REDIS_TIMEOUT_S = 0.25  # a rate limit check is a sub-millisecond round trip on a healthy Redis


def register_limits(app: Flask, settings: Settings) -> Limiter:
    """Count each API key's requests against `settings.rate_limit` (after the auth hook)."""
    try:
        parse_many(settings.rate_limit)
    except ValueError as exc:
        raise SettingsError(f"RATE_LIMIT: {exc}, not {settings.rate_limit!r}") from None
    storage = limit_storage(settings)
    redis = storage.startswith(("redis", "rediss"))
    options = {"socket_timeout": REDIS_TIMEOUT_S, "socket_connect_timeout": REDIS_TIMEOUT_S}
    limiter = Limiter(
        caller_key,
        app=app,
        application_limits=[settings.rate_limit],
        application_limits_exempt_when=lambda: "caller" not in g,
        strategy="fixed-window",
        storage_uri=storage,
        storage_options=options if redis else {},
        in_memory_fallback_enabled=True,
        swallow_errors=True,
        headers_enabled=False,
    )

    @app.errorhandler(RateLimitExceeded)
    def rate_limited(exc: RateLimitExceeded):
        wait = retry_after(limiter, exc)
        body, status = error_response(
            429, "rate_limited", f"this API key sent more than {exc.limit.limit}; retry in {wait} s"
        )
        return body, status, {"Retry-After": str(wait)}

    return limiter


def limit_storage(settings: Settings) -> str:
    """Where the counts live: the setting, else memory:// embedded, else the broker's Redis."""
    if settings.rate_limit_storage:
        return settings.rate_limit_storage
    return "memory://" if settings.embedded else settings.broker_url


def caller_key() -> str:
    """What a request is counted against: its API key (the auth hook identified it)."""
    return str(g.caller.key_id)


def retry_after(limiter: Limiter, exc: RateLimitExceeded) -> int:
    """Whole seconds until the breached limit's window resets (at least 1)."""
    try:
        reset_at = limiter.current_limit.reset_at
    except Exception:  # the storage failed just now: a whole window is a safe answer
        return int(exc.limit.limit.get_expiry())
    return max(1, math.ceil(reset_at - time.time()))


def check_queue_room(count: int) -> None:
    """A 503 `queue_full` unless `count` more jobs fit the tenant's and the global bound (as
    `store.queue_counts` knows them: at most a second old, plus this process's own since)."""
    settings = services().settings
    mine, total = services().queued.of(tenant())
    if mine + count > settings.max_queued_per_tenant:
        full = f"this tenant has {mine} jobs queued, at most {settings.max_queued_per_tenant}"
    elif total + count > settings.max_queued_jobs:
        full = f"the service has {total} jobs queued, at most {settings.max_queued_jobs}"
    else:
        return
    raise ErrorResponse(
        503,
        "queue_full",
        f"{full}; {count} more do not fit: retry later",
        headers={"Retry-After": str(QUEUE_FULL_RETRY_S)},
    )
