"""Webhooks end to end: API → worker → outbox → webhook worker → a real loopback receiver.

Postgres, Redis, moto S3, an inference worker, a webhook worker and beat run as real processes;
the retry schedule is compressed to fractions of a second (with one 4 s step to kill a worker
in), the timeout to 1 s and the sweeper's period to 1 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from captioner_client import ApiError
from core.signatures import VerificationError, verify
from harness.receiver import Reply

SCHEDULE = (0.0, 0.3, 0.3, 4.0, 0.3, 0.3)  # seconds before attempts 1…6
TIMEOUT_S = 1.0
ROOT = Path(__file__).resolve().parents[1]
STACK = {"workers": ["inference", "webhooks"], "beat": True, "trained_bundle": True,
         "batch_max_size": 4, "sweep_interval_s": 1.0, "webhook_timeout_s": TIMEOUT_S,
         "webhook_schedule": SCHEDULE}  # fmt: skip


def current_secret(stack) -> str:
    return stack.client.request("GET", "/v1/webhooks/secret")["secret"]


def deliveries(stack, kind: str, resource_id: str) -> list[dict]:
    return stack.client.request("GET", f"/v1/{kind}/{resource_id}/deliveries")["deliveries"]


@pytest.fixture(scope="module")
def image(shapes_dir) -> bytes:
    return sorted((shapes_dir / "images" / "val").glob("*.png"))[0].read_bytes()


def submit(stack, receiver, image: bytes, path: str, *replies: Reply, events=None) -> str:
    """A job whose webhook goes to `path` (answered with `replies`); returns its id."""
    options = {"webhook": receiver.script(path, *replies)}
    if events:
        options["webhook_events"] = events
    return stack.client.submit(image, **options).id


def settled(stack, kind: str, resource_id: str, timeout: float = 30) -> list[dict]:
    """The resource's deliveries once none is pending or in flight."""
    deadline = time.monotonic() + timeout
    while True:
        found = deliveries(stack, kind, resource_id)
        if found and all(d["status"] in ("delivered", "failed") for d in found):
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(json.dumps(found, indent=1))
        time.sleep(0.1)


def wait_until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.05)


def test_start_and_completed_arrive_in_order_signed_and_carrying_the_job(stack, receiver, image):
    job_id = submit(stack, receiver, image, "/both", events=["start", "completed"])
    started, completed = receiver.wait(path="/both", count=2)
    secret = current_secret(stack)
    for message in (started, completed):
        verify(secret, message.headers, message.body)  # ours
        Webhook(secret).verify(message.body, message.headers)  # the specification's library
    first, second = json.loads(started.body), json.loads(completed.body)
    assert (first["type"], second["type"]) == ("job.started", "job.completed")
    assert first["data"]["status"] == "running" and first["data"]["id"] == job_id
    assert second["data"] == stack.client.job(job_id).raw  # what GET returns, links not arrays
    assert second["data"]["status"] == "succeeded" and "attention" in second["data"]["urls"]
    assert started.headers["webhook-id"] != completed.headers["webhook-id"]
    assert started.headers["content-type"] == "application/json"

    log = settled(stack, "jobs", job_id)
    assert [d["webhook_id"] for d in log] == [m.headers["webhook-id"] for m in (started, completed)]
    assert [d["attempts"][0]["status_code"] for d in log] == [200, 200]


def test_a_changed_body_a_wrong_secret_or_a_stale_timestamp_fail_verification(
    stack, receiver, image
):
    submit(stack, receiver, image, "/verify")
    (message,) = receiver.wait("/verify", 1)
    secret, headers = current_secret(stack), message.headers
    changed = message.body.replace(b'"succeeded"', b'"failed"')
    assert changed != message.body
    wrong = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # a secret this service never used
    stale = int(headers["webhook-timestamp"]) + 400
    for body, key, now in (
        (changed, secret, None),
        (message.body, wrong, None),
        (message.body, secret, stale),
    ):
        with pytest.raises(VerificationError):
            verify(key, headers, body, now=now)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(changed, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(wrong).verify(message.body, headers)


def test_two_failures_then_success_make_three_attempts_with_one_webhook_id(stack, receiver, image):
    job_id = submit(stack, receiver, image, "/flaky", Reply(500), Reply(500))
    messages = receiver.wait("/flaky", 3)
    assert len({m.headers["webhook-id"] for m in messages}) == 1
    secret = current_secret(stack)
    for message in messages:
        verify(secret, message.headers, message.body)
    assert len({m.body for m in messages}) == 1  # the same bytes every time
    gaps = [b.at - a.at for a, b in pairwise(messages)]
    assert all(gap >= SCHEDULE[1] * 0.9 - 0.05 for gap in gaps)  # the schedule, less jitter

    (delivery,) = settled(stack, "jobs", job_id)
    assert delivery["status"] == "delivered" and delivery["attempt_count"] == 3
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 200]
    assert [a["error"] for a in delivery["attempts"]] == ["HTTP 500", "HTTP 500", None]
    time.sleep(1)
    assert len(receiver.received("/flaky")) == 3  # nothing after the success


def test_410_gone_stops_retries(stack, receiver, image):
    job_id = submit(stack, receiver, image, "/gone", Reply(410), Reply(500))
    receiver.wait("/gone", 1)
    (delivery,) = settled(stack, "jobs", job_id)
    time.sleep(2 * sum(SCHEDULE[1:3]) + 1)
    assert len(receiver.received("/gone")) == 1
    assert delivery["status"] == "failed" and delivery["attempt_count"] == 1
    assert delivery["attempts"][0]["status_code"] == 410


def test_a_redirect_counts_as_a_failure_and_retry_after_is_honoured(stack, receiver, image):
    moved = Reply(302, headers={"Location": receiver.url("/elsewhere")})
    busy = Reply(503, headers={"Retry-After": "2"})
    job_id = submit(stack, receiver, image, "/busy", moved, busy)
    messages = receiver.wait("/busy", 3)
    assert messages[2].at - messages[1].at >= 1.9  # 2 s asked for, not the schedule's 0.3 s
    assert receiver.received("/elsewhere") == []
    (delivery,) = settled(stack, "jobs", job_id)
    assert [a["status_code"] for a in delivery["attempts"]] == [302, 503, 200]


def test_a_slow_receiver_is_cut_off_at_the_timeout(stack, receiver, image):
    job_id = submit(stack, receiver, image, "/slow", Reply(200, delay_s=TIMEOUT_S + 2))
    receiver.wait("/slow", 2)
    (delivery,) = settled(stack, "jobs", job_id)
    slow, fast = delivery["attempts"]
    assert slow["status_code"] is None and slow["error"] == "timed out"
    assert TIMEOUT_S * 1000 * 0.9 <= slow["latency_ms"] <= TIMEOUT_S * 1000 + 1000
    assert fast["status_code"] == 200 and delivery["status"] == "delivered"


def test_a_batch_webhook_fires_once_when_every_job_has_ended(stack, receiver, image, shapes_dir):
    images = [p.read_bytes() for p in sorted((shapes_dir / "images" / "val").glob("*.png"))[:6]]
    url = receiver.script("/batch")
    batch = stack.client.submit_batch(images, webhook=url)
    try:  # a canceled job ends the batch too
        stack.client.cancel(batch.jobs[-1])
    except ApiError as exc:  # the worker took it first
        assert exc.code == "not_cancelable"
    (message,) = receiver.wait("/batch", 1)
    event = json.loads(message.body)
    assert event["type"] == "batch.completed"
    assert event["data"] == stack.client.batch(batch).raw
    assert event["data"]["status"] == "completed"
    assert sum(event["data"]["counts"].values()) == 6
    time.sleep(2)
    assert len(receiver.received("/batch")) == 1
    assert [d["event"] for d in deliveries(stack, "batches", batch.id)] == ["batch.completed"]
    assert all(deliveries(stack, "jobs", job.id) == [] for job in batch.jobs)


def test_a_delivery_owed_when_the_webhook_worker_dies_is_sent_after_restart(stack, receiver, image):
    job_id = submit(stack, receiver, image, "/outage", Reply(500), Reply(500), Reply(500))
    messages = receiver.wait("/outage", 3)  # the next attempt is SCHEDULE[3] = 4 s away
    wait_until(lambda: deliveries(stack, "jobs", job_id)[0]["status"] == "pending")  # logged
    stack.processes["webhooks@stack"].kill()  # SIGKILL: its countdown for that attempt dies too
    stack.processes["webhooks@stack"].wait()
    assert len(receiver.received("/outage")) == 3  # killed mid-backoff
    stack.start_worker("webhooks")
    fourth = receiver.wait("/outage", 4, timeout=60)[-1]
    assert fourth.headers["webhook-id"] == messages[0].headers["webhook-id"]
    (delivery,) = settled(stack, "jobs", job_id)
    assert delivery["status"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 500, 200]


def test_replay_sends_the_same_message_again(stack, receiver, image):
    job_id = submit(stack, receiver, image, "/replay")
    (first,) = receiver.wait("/replay", 1)
    (delivery,) = settled(stack, "jobs", job_id)
    replayed = stack.client.request("POST", delivery["urls"]["replay"])
    assert replayed["status"] in ("pending", "sending", "delivered")
    second = receiver.wait("/replay", 2)[-1]
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    assert second.body == first.body
    (again,) = settled(stack, "jobs", job_id)
    assert again["attempt_count"] == 2 and again["id"] == delivery["id"]


def test_after_rotation_both_secrets_sign_until_the_grace_period_ends(stack, receiver, image):
    old = current_secret(stack)
    rotated = stack.client.request("POST", "/v1/webhooks/secret/rotate", json={"grace_seconds": 60})
    new = rotated["secret"]
    assert new != old and rotated["previous"][0]["secret"] == old
    submit(stack, receiver, image, "/rotation")
    (message,) = receiver.wait("/rotation", 1)
    assert len(message.headers["webhook-signature"].split()) == 2
    for secret in (old, new):
        verify(secret, message.headers, message.body)
        Webhook(secret).verify(message.body, message.headers)


def test_the_example_receiver_verifies_and_prints_events(stack, receiver, image, tmp_path):
    example = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "webhook_receiver.py"), "--port", "0"],
        env=os.environ | {"WEBHOOK_SECRET": current_secret(stack)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = example.stdout.readline().split()[-1]
        job_id = stack.client.submit(image, webhook=url + "hook").id
        printed = json.loads(example.stdout.readline())
        (delivery,) = settled(stack, "jobs", job_id)
    finally:
        example.kill()
    assert printed["id"] == job_id and printed["type"] == "job.completed"
    assert printed["caption"] == stack.client.job(job_id).caption.caption
    assert delivery["attempts"][0]["status_code"] == 204
