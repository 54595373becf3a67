"""The webhook sender: one attempt of one delivery per task, on the `webhooks` queue.

An attempt claims the delivery (so no two senders make it), signs the stored body with every
secret in use, POSTs it with a timeout, logs the outcome and settles the delivery: delivered on
a 2xx; otherwise retried after the schedule's next delay (± jitter, or later if `Retry-After`
asks on 429/503), or failed once the schedule is spent. `410 Gone` stops every pending delivery
to that endpoint. Short delays are Celery countdowns; the sweeper sends the longer ones, and
anything a dead worker left owed, once they are due.
"""

from __future__ import annotations

import http.client
import logging
import random
import time
import uuid
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

from core.broker import Broker
from core.credentials import cipher_for
from core.errors import UrlError
from core.metrics import WEBHOOK_ATTEMPTS, WEBHOOK_LAG
from core.netguard import Guard
from core.settings import Settings
from core.signatures import signed_headers
from store import deliveries
from store.db import Database
from store.deliveries import AttemptRecord
from store.payloads import absolute_urls_text
from store.tables import Delivery, as_utc, utcnow
from store.webhook_secrets import secrets_in_use

log = logging.getLogger(__name__)
COUNTDOWN_MAX_S = 60  # longer waits are left to the sweeper (Redis holds countdowns in memory)
SWEEP_SLACK = timedelta(seconds=2)  # a due delivery's own message usually arrives first
# A claim's lease: the attempt's timeout and this much for the claim and the settlement. When a
# sender dies, or its claim commits while the answer is lost (Postgres cut off), the delivery
# waits for the lease to end: 60 s here kept a webhook over a minute late in the fault suite.
LEASE_SLACK_S = 15
RESPONSE_CHARS = 500  # of the response body kept in the log
USER_AGENT = "captioner-webhooks/1"


class Sender:
    """Makes delivery attempts, and puts the next ones on the webhooks queue through `broker`."""

    def __init__(self, settings: Settings, db: Database, broker: Broker, rng=random.random) -> None:
        self.settings = settings
        self.cipher = cipher_for(settings)
        self.db = db
        self.broker = broker
        self.rng = rng
        self.guard = Guard.from_allow(settings.url_allow)

    def deliver(self, delivery_id: str) -> str:
        """One attempt, if the delivery is due and ours; returns what happened, for the log."""
        lease = timedelta(seconds=self.settings.webhook_timeout_s + LEASE_SLACK_S)
        with self.db.session() as session:
            delivery = deliveries.claim(session, uuid.UUID(delivery_id), lease)
            if delivery is None:
                return "skipped (not due, in flight elsewhere, waiting its turn, or settled)"
            secrets = [s.secret for s in secrets_in_use(session, delivery.owner, self.cipher)]
        body = absolute_urls_text(delivery.body, self.settings.public_url).encode()  # PUBLIC_URL
        headers = signed_headers(secrets, delivery.message_id, body)
        record, retry_after = post(
            delivery.url, headers, body, self.settings.webhook_timeout_s, self.guard
        )
        return self._settle(delivery, record, retry_after)

    def _settle(self, delivery: Delivery, record: AttemptRecord, retry_after: float | None) -> str:
        final = record.error is None or record.status_code == 410  # delivered, or Gone
        final = final or not deliveries.retried(delivery.event)
        retry_in = None if final else self.retry_delay(delivery, retry_after)
        retry_at = utcnow() + timedelta(seconds=retry_in) if retry_in is not None else None
        with self.db.session() as session:
            status = deliveries.finish_attempt(session, delivery, record, retry_at)
            if record.status_code == 410:
                deliveries.stop_endpoint(session, delivery.owner, delivery.url)
            waiting = deliveries.due_ids(session, delivery.resource_id)  # held back by this one
        waiting = [other for other in waiting if other != delivery.id]
        if retry_in is not None and retry_in <= COUNTDOWN_MAX_S:
            self.broker.deliveries([delivery.id], retry_in)
        self.broker.deliveries(waiting)
        outcome = record.status_code or record.error
        log.info("delivery %s attempt %d: %s → %s", delivery.id, delivery.attempts, outcome, status)
        WEBHOOK_ATTEMPTS.labels(attempt_outcome(record)).inc()
        if record.error is None:
            WEBHOOK_LAG.observe((utcnow() - as_utc(delivery.created_at)).total_seconds())
        return status

    def retry_delay(self, delivery: Delivery, retry_after: float | None) -> float | None:
        """Seconds until the next attempt, or None when the schedule is spent."""
        schedule = self.settings.webhook_schedule
        step = delivery.step + 1
        if step >= len(schedule):
            return None
        jitter = self.settings.webhook_jitter
        delay = schedule[step] * (1 + jitter * (2 * self.rng() - 1))
        if retry_after is not None:  # the receiver asked for more time (429/503)
            delay = max(delay, min(retry_after, max(schedule)))
        return delay

    def sweep(self) -> int:
        """Send every delivery that is due (after freeing dead senders' leases)."""
        with self.db.session() as session:
            deliveries.free_expired_leases(session)
            due = deliveries.due_ids(session, slack=SWEEP_SLACK)
        sent = self.broker.deliveries(due)
        if sent:
            log.info("delivery sweeper sent %d", len(sent))
        return len(sent)


def post(url: str, headers: dict[str, str], body: bytes, timeout: float, guard: Guard):
    """POST `body` to the address `guard` checked (a refused one is a failed attempt, never a
    connection); returns (the attempt's record, seconds asked for by Retry-After or None)."""
    started, clock = utcnow(), time.perf_counter()
    headers = headers | {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    code, text, error, retry_after = None, None, None, None
    try:
        response, _ = guard.request(guard.check(url), "POST", headers, body, timeout)
        with response:  # a 3xx is a failed attempt: redirects are not followed
            code, text = response.status, response.read(RESPONSE_CHARS)
            if code in (429, 503):
                retry_after = parse_retry_after(response.getheader("Retry-After"))
    except UrlError as exc:
        error = str(exc)
    except (http.client.HTTPException, OSError, ValueError) as exc:
        error = describe(exc)
    latency_ms = (time.perf_counter() - clock) * 1000
    if error is None and latency_ms > timeout * 1000:
        error = f"no complete response within {timeout:g} s"
    if error is None and not 200 <= code < 300:
        error = f"HTTP {code}"
    response_text = text.decode("utf-8", "replace") if text else None
    return AttemptRecord(started, latency_ms, code, error, response_text), retry_after


def describe(exc: Exception) -> str:
    """A short reason for a failed connection."""
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return "timed out"
    return f"{type(reason).__name__}: {reason}"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - (now or utcnow())).total_seconds())


def attempt_outcome(record: AttemptRecord) -> str:
    """delivered, or why not: http_4xx / http_5xx, url_forbidden (the SSRF guard) or another
    url_ code, timeout, connection."""
    if record.error is None:
        return "delivered"
    if record.status_code:
        return f"http_{record.status_code // 100}xx"
    if record.error == "timed out":
        return "timeout"
    code = record.error.partition(":")[0]
    return code if code.startswith("url_") else "connection"
