"""Verifying webhooks as the service signs them: the Standard Webhooks scheme
(https://www.standardwebhooks.com), with the standard library only.

A message carries `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`:
space-separated `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one per secret in use.
The secret is `whsec_` + base64 of its key bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

from captioner_client._errors import CaptionerError

PREFIX = "whsec_"
TOLERANCE_S = 300  # a timestamp further than this from now is refused (replay protection)


class WebhookVerificationError(CaptionerError):
    """The message is not signed by the secret, or its timestamp is too far from now."""


def _sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    try:
        key = base64.b64decode(secret.removeprefix(PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from None
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance_s: float = TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Raise WebhookVerificationError unless `body` and `headers` were signed with `secret`
    within `tolerance_s` of now; pass the body exactly as received (bytes, not parsed JSON)."""
    lower = {name.lower(): value for name, value in headers.items()}
    try:
        message_id = lower["webhook-id"]
        timestamp = int(lower["webhook-timestamp"])
        offered = lower["webhook-signature"].split()
    except (KeyError, ValueError):
        raise WebhookVerificationError("missing or malformed webhook-* headers") from None
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        raise WebhookVerificationError("the timestamp is too far from now (a replay?)")
    expected = _sign(secret, message_id, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in offered):
        raise WebhookVerificationError("no signature matches this secret")
