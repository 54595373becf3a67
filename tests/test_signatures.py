"""Standard Webhooks signatures: the specification's example, tampering, secrets, rotation."""

from __future__ import annotations

import base64

import pytest

from core.signatures import VerificationError, new_secret, sign, signed_headers, verify

# The example in the Standard Webhooks documentation.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MESSAGE_ID, TIMESTAMP = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330
BODY = b'{"test": 2432232314}'


def test_the_specifications_example_signature():
    assert sign(SECRET, MESSAGE_ID, TIMESTAMP, BODY) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_a_signed_message_verifies():
    headers = signed_headers([SECRET], MESSAGE_ID, BODY, TIMESTAMP)
    verify(SECRET, headers, BODY, now=TIMESTAMP + 10)


@pytest.mark.parametrize(
    ("secret", "body", "now", "problem"),
    [
        (SECRET, b'{"test": 2432232315}', TIMESTAMP, "changed body"),
        (new_secret(), BODY, TIMESTAMP, "wrong secret"),
        (SECRET, BODY, TIMESTAMP + 301, "stale timestamp"),
        (SECRET, BODY, TIMESTAMP - 301, "timestamp from the future"),
    ],
)
def test_tampering_fails_verification(secret, body, now, problem):
    headers = signed_headers([SECRET], MESSAGE_ID, BODY, TIMESTAMP)
    with pytest.raises(VerificationError):
        verify(secret, headers, body, now=now)


def test_missing_headers_fail_verification():
    with pytest.raises(VerificationError):
        verify(SECRET, {"webhook-id": MESSAGE_ID}, BODY, now=TIMESTAMP)


def test_during_rotation_either_secret_verifies():
    new = new_secret()
    headers = signed_headers([new, SECRET], MESSAGE_ID, BODY, TIMESTAMP)
    assert len(headers["webhook-signature"].split()) == 2
    verify(SECRET, headers, BODY, now=TIMESTAMP)
    verify(new, headers, BODY, now=TIMESTAMP)


@pytest.mark.parametrize("size", [24, 32, 64])
def test_new_secrets_have_the_prefix_and_their_size(size):
    secret = new_secret(size)
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == size


@pytest.mark.parametrize("size", [23, 65])
def test_secret_sizes_outside_the_specification_are_refused(size):
    with pytest.raises(ValueError):
        new_secret(size)
