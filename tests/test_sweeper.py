"""The sweeper's resend rule, on real Postgres and Redis: a queued job whose message may have
died with a worker is sent again after one lease when no message waits in the queue (nothing
else would claim it), and after RESEND_LEASES while messages wait (they claim whatever is next:
resending then only adds duplicates)."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from sqlalchemy import update

from core.broker import Broker, make_celery
from store import jobs
from store.db import Database
from store.tables import Job, utcnow
from tests.helpers import new_job
from worker.sweeper import RESEND_LEASES, resend


@pytest.fixture
def sweeper(settings, queue):
    """(database, broker) for the sweeper, the inference queue empty, the broker's marker set
    (a first check after a start would resend every queued job)."""
    database, broker = Database(settings.database_url), Broker(make_celery(settings), logging)
    broker.lost_messages()
    yield database, broker
    with database.session() as session:
        session.execute(update(Job).values(status="canceled"))  # none left for the next test
    database.dispose()


def sent_ago(database: Database, leases: float, settings) -> str:
    """A queued job whose message went out `leases` leases ago; its id."""
    new = new_job(enqueued_at=utcnow() - timedelta(seconds=leases * settings.job_lease_seconds))
    with database.session() as session:
        return str(jobs.create_job(session, new).id)


def test_with_no_message_waiting_a_job_is_sent_again_after_one_lease(settings, sweeper, queue):
    database, broker = sweeper
    recent, old = sent_ago(database, 0.5, settings), sent_ago(database, 1.2, settings)
    assert resend(settings, database, broker) == 1
    assert queue.llen("inference") == 1
    message = queue.lrange("inference", 0, -1)[0].decode()  # its arguments are in its headers
    assert old in message and recent not in message


def test_while_messages_wait_only_a_job_unclaimed_for_several_leases_is_sent(
    settings, sweeper, queue
):
    database, broker = sweeper
    queue.lpush("inference", b"a message another job sent")  # a worker will take it
    sent_ago(database, 1.2, settings)
    assert resend(settings, database, broker) == 0
    sent_ago(database, RESEND_LEASES + 0.2, settings)
    assert resend(settings, database, broker) == 1
