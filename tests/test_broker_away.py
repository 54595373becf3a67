"""Redis away when jobs are submitted (a gate in front of it is closed): each submission is
recorded and answered at once, says `enqueued: false`, and the sweeper sends its job at the
first sweep once Redis is back. Real Postgres, Redis and moto S3."""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from api import create_app
from core.broker import Broker, make_celery
from harness.gate import Gate
from harness.stack import (
    admin_key,
    fresh_postgres,
    moto_s3_server,
    production_settings,
    redis_database,
)
from store.db import Database
from store.migrate import upgrade
from tests.helpers import OWNER, b64, png
from worker.sweeper import resend


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """(settings, gate, the broker's own URL): production-mode settings whose broker is Redis
    behind a gate."""
    with moto_s3_server() as endpoint, fresh_postgres() as url, redis_database() as broker:
        upgrade(url)
        parts = urlsplit(broker)
        with Gate(parts.port or 6379) as gate:
            through = gate.through(broker)
            folder = tmp_path_factory.mktemp("broker-away")
            yield production_settings(Path(folder), url, through, endpoint), gate, broker


def unsent_total(client) -> float:
    """captioner_jobs_unsent_total, as /metrics shows it."""
    text = client.get("/metrics").get_data(as_text=True)
    found = re.search(r"^captioner_jobs_unsent_total (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_submissions_while_the_broker_is_away_are_answered_and_sent_later(gated):
    settings, gate, direct = gated
    app = create_app(settings)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = (
        f"Bearer {admin_key(app.extensions['captioner'].db, OWNER)}"
    )
    assert client.post("/v1/jobs", json={"image": b64(png())}).get_json()["enqueued"] is True
    before = unsent_total(client)  # the counter is the process's: other tests may have counted
    gate.close()
    try:
        single = client.post("/v1/jobs", json={"image": b64(png())})
        batch = client.post("/v1/batches", json={"images": [b64(png())] * 3})
        assert single.status_code == 202 and batch.status_code == 202
        assert app.extensions["captioner"].broker.away_until > time.monotonic()  # not retried
        later = [client.post("/v1/jobs", json={"image": b64(png())}) for _ in range(3)]
    finally:
        gate.open()
    answers = [single.get_json(), *batch.get_json()["jobs"], *(a.get_json() for a in later)]
    assert [a["enqueued"] for a in answers] == [False] * len(answers)
    again = client.get(f"/v1/jobs/{single.get_json()['id']}").get_json()
    assert again["status"] == "queued" and again["enqueued"] is False
    assert unsent_total(client) == before + len(answers)

    queue = redis.Redis.from_url(direct)
    waiting = queue.llen("inference")
    database, sweeper = Database(settings.database_url), Broker(make_celery(settings), app.logger)
    sweeper.lost_messages()  # the first check after a start says lost: resend all, not these
    try:
        sent = resend(settings, database, sweeper)
    finally:
        database.dispose()
    assert sent == len(answers)  # at the first sweep, none left for the next
    assert queue.llen("inference") > waiting
    assert client.get(f"/v1/jobs/{single.get_json()['id']}").get_json()["enqueued"] is True
    app.extensions["captioner"].db.dispose()
