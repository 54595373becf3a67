"""Webhook signatures per the Standard Webhooks specification (https://www.standardwebhooks.com).

A message carries `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`:
space-separated `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one per secret in use
(two while a rotated-out secret is still valid). Secrets are `whsec_` + base64 of random bytes.
Receivers can verify with `verify()` here, or with the specification's own libraries.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping, Sequence

from core.errors import VerificationError

PREFIX = "whsec_"
TOLERANCE_S = 300  # a timestamp further than this from now is refused (replay protection)


def new_secret(size: int = 32) -> str:
    """A fresh secret: `whsec_` + base64 of `size` (24–64) random bytes."""
    if not 24 <= size <= 64:
        raise ValueError("a secret has 24 to 64 random bytes")
    return PREFIX + base64.b64encode(secrets.token_bytes(size)).decode()


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from None


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,<base64>` signature of one message under one secret."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(
    secrets_in_use: Sequence[str], message_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The three headers of a message, signed with every secret in use."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    signatures = " ".join(sign(s, message_id, timestamp, body) for s in secrets_in_use)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signatures,
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance_s: int = TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Raise VerificationError unless `body` and `headers` were signed with `secret`, recently."""
    lower = {name.lower(): value for name, value in headers.items()}
    try:
        message_id = lower["webhook-id"]
        timestamp = int(lower["webhook-timestamp"])
        offered = lower["webhook-signature"].split()
    except (KeyError, ValueError):
        raise VerificationError("missing or malformed webhook-* headers") from None
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        raise VerificationError("the timestamp is too far from now (a replay?)")
    expected = sign(secret, message_id, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in offered):
        raise VerificationError("no signature matches this secret")
