"""The webhook outbox on Postgres and SQLite: recorded with status changes, claimed, retried."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import partial

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import update

from core.credentials import Cipher
from store import batches, deliveries, jobs, webhook_secrets
from store.db import Database
from store.deliveries import AttemptRecord
from store.tables import Delivery, Job, utcnow
from tests.helpers import new_job

LEASE = timedelta(seconds=60)
HOOK = "https://example.com/hook"
CIPHER = Cipher(Fernet.generate_key().decode())


def result() -> jobs.JobResult:
    return jobs.JobResult(
        caption="a red circle",
        tokens=["a", "red", "circle"],
        token_log_probs=[-0.1, -0.2, -0.3],
        model_version="v1",
        attention=b"npy",
        attention_shape=[3, 64],
        predict_ms=12.5,
        batch_size=1,
    )


def record(error: str | None = None, code: int | None = 200) -> AttemptRecord:
    return AttemptRecord(utcnow(), 12.0, code, error, "ok")


def claim_job(db: Database, job_id: uuid.UUID) -> jobs.Claim:
    with db.session() as session:
        return jobs.claim_jobs(session, [job_id], 60, 3, "w")


def finish(db: Database, claim: jobs.Claim) -> list[uuid.UUID]:
    with db.session() as session:
        return jobs.finish_jobs(session, claim.token, {job.id: result() for job in claim.jobs})


def events(db: Database, resource_id: uuid.UUID) -> list[str]:
    with db.session() as session:
        return [d.event for d in deliveries.list_deliveries(session, resource_id)]


def test_a_job_announces_its_start_once_and_its_end_with_the_same_transaction(db):
    new = new_job(webhook_url=HOOK, webhook_events=["start", "completed"])
    with db.session() as session:
        jobs.create_job(session, new)
    first = claim_job(db, new.id)
    with db.session() as session:
        jobs.release_jobs(session, first.token, [new.id])  # a temporary failure: it runs again
    claim = claim_job(db, new.id)
    assert events(db, new.id) == ["job.started"]  # not again on attempt 2
    with db.session() as session:
        assert jobs.finish_jobs(session, claim.token, {new.id: result()}) == [new.id]
        assert len(session.info[deliveries.NEW]) == 1  # for the after-commit hook to send
    assert events(db, new.id) == ["job.started", "job.completed"]
    with db.session() as session:
        started, completed = deliveries.list_deliveries(session, new.id)
    body = json.loads(completed.body)
    assert body["type"] == "job.completed" and body["data"]["status"] == "succeeded"
    assert body["data"]["result"]["caption"] == "a red circle"
    assert json.loads(started.body)["data"]["status"] == "running"


@pytest.mark.parametrize("end", ["cancel", "fail", "abort", "too_many_attempts"])
def test_every_terminal_status_announces_completed(db, end):
    past = utcnow() - timedelta(seconds=1)
    new = new_job(
        webhook_url=HOOK, webhook_events=["completed"], deadline_at=past if end == "abort" else None
    )
    with db.session() as session:
        jobs.create_job(session, new)
        if end == "cancel":
            jobs.cancel_job(session, new.id)
        elif end == "fail":
            jobs.fail_job(session, new.id, "corrupt_image", "bad")
    if end == "too_many_attempts":  # three attempts were made already
        with db.session() as session:
            session.execute(update(Job).where(Job.id == new.id).values(attempts=3))
    if end in ("abort", "too_many_attempts"):
        assert claim_job(db, new.id).jobs == []  # ended instead of claimed
    assert events(db, new.id) == ["job.completed"]
    with db.session() as session:
        (delivery,) = deliveries.list_deliveries(session, new.id)
    status = json.loads(delivery.body)["data"]["status"]
    assert (
        status
        == {
            "cancel": "canceled",
            "fail": "failed",
            "abort": "aborted",
            "too_many_attempts": "failed",
        }[end]
    )


def test_no_webhook_or_an_event_not_asked_for_records_nothing(db):
    quiet, only_start = new_job(), new_job(webhook_url=HOOK, webhook_events=["start"])
    with db.session() as session:
        jobs.create_job(session, quiet)
        jobs.create_job(session, only_start)
        jobs.cancel_job(session, quiet.id)
        jobs.cancel_job(session, only_start.id)
    assert events(db, quiet.id) == [] and events(db, only_start.id) == []


def test_completed_waits_for_the_first_attempt_of_started(db):
    new = new_job(webhook_url=HOOK, webhook_events=["start", "completed"])
    with db.session() as session:
        jobs.create_job(session, new)
    finish(db, claim_job(db, new.id))
    with db.session() as session:
        started, completed = deliveries.list_deliveries(session, new.id)
    with db.session() as session:
        assert deliveries.claim(session, completed.id, LEASE) is None  # started goes first
        sending = deliveries.claim(session, started.id, LEASE)
        assert sending.attempts == 1
    with db.session() as session:
        assert deliveries.claim(session, completed.id, LEASE) is None  # still in flight
        deliveries.finish_attempt(session, sending, record("HTTP 500", 500), utcnow())
    with db.session() as session:  # started's retry does not hold completed back
        assert set(deliveries.due_ids(session, new.id)) == {started.id, completed.id}
        assert deliveries.claim(session, completed.id, LEASE) is not None


def test_a_failed_attempt_is_retried_when_due_then_given_up(db):
    delivery = canceled_delivery(db)
    with db.session() as session:
        sending = deliveries.claim(session, delivery.id, LEASE)
        assert deliveries.claim(session, delivery.id, LEASE) is None  # one attempt at a time
    later = utcnow() + timedelta(hours=1)
    with db.session() as session:
        assert deliveries.finish_attempt(session, sending, record("HTTP 500", 500), later) == (
            "pending"
        )
    with db.session() as session:
        assert deliveries.claim(session, delivery.id, LEASE) is None  # not due for an hour
        assert delivery.id not in deliveries.due_ids(session)
        row = deliveries.get_delivery(session, delivery.id, "tenant")
        assert (row.step, row.attempts) == (1, 1)
        now = {"next_attempt_at": utcnow()}
        session.execute(update(Delivery).where(Delivery.id == delivery.id).values(**now))
    with db.session() as session:
        sending = deliveries.claim(session, delivery.id, LEASE)
        assert deliveries.finish_attempt(session, sending, record("timed out", None), None) == (
            "failed"
        )
    with db.session() as session:
        attempts = deliveries.attempts_of(session, [delivery.id])[delivery.id]
    assert [(a.number, a.status_code, a.error) for a in attempts] == [
        (1, 500, "HTTP 500"),
        (2, None, "timed out"),
    ]


def test_a_dead_senders_lease_expires_and_replay_starts_over(db):
    delivery = canceled_delivery(db)
    with db.session() as session:
        assert deliveries.claim(session, delivery.id, timedelta(seconds=-1)) is not None
    with db.session() as session:
        assert deliveries.replay(session, delivery.id) is False  # in flight (as far as we know)
        assert deliveries.free_expired_leases(session) >= 1  # the lease ran out: pending again
        assert delivery.id in deliveries.due_ids(session)
    with db.session() as session:
        sending = deliveries.claim(session, delivery.id, LEASE)
        deliveries.finish_attempt(session, sending, record(), None)
    with db.session() as session:
        assert deliveries.replay(session, delivery.id)
        row = deliveries.get_delivery(session, delivery.id, "tenant")
        assert (row.status, row.step, row.attempts) == ("pending", 0, 2)
        assert deliveries.get_delivery(session, delivery.id, "someone else") is None


def test_410_stops_the_endpoints_other_pending_deliveries(db):
    first, second = (
        canceled_delivery(db, "https://gone.test/x"),
        canceled_delivery(db, "https://gone.test/x"),
    )
    with db.session() as session:
        sending = deliveries.claim(session, first.id, LEASE)
        deliveries.finish_attempt(session, sending, record("HTTP 410", 410), None)
        assert deliveries.stop_endpoint(session, "tenant", "https://gone.test/x") == 1
    with db.session() as session:
        assert deliveries.get_delivery(session, second.id, "tenant").status == "failed"


def test_a_batch_completes_once_however_its_jobs_end_together(db):
    new_jobs = [new_job() for _ in range(8)]
    with db.session() as session:
        batch, _ = batches.create_batch(session, "tenant", new_jobs, HOOK, ["start", "completed"])
    claims = [claim_job(db, new.id) for new in new_jobs]
    assert events(db, batch.id) == ["batch.started"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(partial(finish, db), claims))
    assert events(db, batch.id) == ["batch.started", "batch.completed"]
    with db.session() as session:
        completed = deliveries.list_deliveries(session, batch.id)[1]
    assert json.loads(completed.body)["data"]["counts"]["succeeded"] == 8
    assert all(events(db, new.id) == [] for new in new_jobs)  # the batch's webhook, not theirs


def test_one_current_secret_even_when_first_asked_for_at_once(db):
    owner = f"owner-{uuid.uuid4().hex[:6]}"

    def first_use(_) -> str:
        with db.session() as session:
            return webhook_secrets.secrets_in_use(session, owner, CIPHER)[0].secret

    with ThreadPoolExecutor(4) as pool:
        assert len(set(pool.map(first_use, range(4)))) == 1
    with db.session() as session:
        rotated = webhook_secrets.rotate(session, owner, timedelta(hours=1), CIPHER)
        assert len(rotated) == 2 and rotated[0].expires_at is None


def canceled_delivery(db: Database, url: str = HOOK):
    new = new_job(webhook_url=url, webhook_events=["completed"])
    with db.session() as session:
        jobs.create_job(session, new)
        jobs.cancel_job(session, new.id)
    with db.session() as session:
        return deliveries.list_deliveries(session, new.id)[0]
