"""Rate limits per API key (counted in Redis, shared by API processes) and the bounded queue,
against real Postgres, Redis and moto S3; the limit across processes with two gunicorn servers
started as production starts them."""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections import Counter

import pytest

from api import create_app
from captioner_client import ApiError, Client, RetryPolicy
from core.errors import SettingsError
from harness.http import free_port
from harness.stack import admin_key, production_api
from store import jobs
from store.queue_counts import QueuedCounts
from tests.conftest import no_dns
from tests.helpers import b64, new_job, png

LIMIT = 5  # requests per minute per key in the rate limit tests


def key_for(app, tenant: str | None = None) -> dict[str, str]:
    """The Authorization header of a new key with every scope, for `tenant` (default: new)."""
    key = admin_key(app.extensions["captioner"].db, tenant or new_tenant())
    return {"Authorization": f"Bearer {key}"}


def new_tenant() -> str:
    """A tenant no other test has used."""
    return f"t-{uuid.uuid4().hex[:8]}"


def queued_counts(app, tenant: str) -> tuple[int, int]:
    """The tenant's queued jobs and everyone's, from the database."""
    with app.extensions["captioner"].db.session() as session:
        counts = jobs.queued_by_owner(session)
    return counts.get(tenant, 0), sum(counts.values())


@pytest.fixture(scope="module")
def limited(settings):
    """An app allowing LIMIT requests a minute per key, counted in the stack's Redis."""
    app = create_app(settings.with_overrides(rate_limit=f"{LIMIT}/minute"))
    yield app
    app.extensions["captioner"].db.dispose()


def test_a_key_over_its_limit_gets_429_json_with_retry_after(limited):
    client, headers = limited.test_client(), key_for(limited)
    answers = [client.get("/v1/models", headers=headers) for _ in range(LIMIT)]
    assert [a.status_code for a in answers] == [200] * LIMIT
    refused = client.get("/v1/jobs", headers=headers)  # every route shares the key's budget
    assert refused.status_code == 429
    error = refused.get_json()
    assert error["code"] == "rate_limited" and "5 per 1 minute" in error["detail"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 61  # the window's end, rounded up


def test_another_tenants_key_is_not_limited_at_the_same_moment(limited):
    client, first, other = limited.test_client(), key_for(limited), key_for(limited)
    for _ in range(LIMIT):
        client.get("/v1/models", headers=first)
    assert client.get("/v1/models", headers=first).status_code == 429
    assert client.get("/v1/models", headers=other).status_code == 200


def test_two_keys_of_one_tenant_have_a_budget_each(limited):
    """The limit is the key's, not the tenant's: a tenant's busy key leaves its others alone."""
    client, tenant = limited.test_client(), new_tenant()
    first, second = key_for(limited, tenant), key_for(limited, tenant)
    for _ in range(LIMIT):
        client.get("/v1/models", headers=first)
    assert client.get("/v1/models", headers=first).status_code == 429
    assert client.get("/v1/models", headers=second).status_code == 200


def test_health_checks_and_requests_without_a_key_are_not_counted(limited):
    client = limited.test_client()
    assert {client.get("/healthz").status_code for _ in range(LIMIT * 2)} == {200}
    assert {client.get("/v1/models").status_code for _ in range(LIMIT * 2)} == {401}


def test_the_api_stays_up_when_the_limits_storage_is_down(settings, caplog):
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    dead = settings.with_overrides(rate_limit=f"{LIMIT}/minute", rate_limit_storage=nowhere)
    app = create_app(dead)
    client, headers = app.test_client(), key_for(app)
    with caplog.at_level(logging.WARNING, logger="flask-limiter"):
        answers = [client.get("/v1/models", headers=headers).status_code for _ in range(LIMIT + 1)]
    app.extensions["captioner"].db.dispose()
    assert answers == [200] * LIMIT + [429]  # counted in this process's memory meanwhile
    assert "falling back to in-memory storage" in caplog.text


def test_a_bad_rate_limit_fails_at_start_up(settings):
    with pytest.raises(SettingsError, match="RATE_LIMIT"):
        create_app(settings.with_overrides(rate_limit="many"))


def test_the_limit_holds_across_two_api_processes_sharing_redis(settings, app, tmp_path):
    limited = settings.with_overrides(rate_limit=f"{LIMIT}/minute")
    key = key_for(app)["Authorization"].removeprefix("Bearer ")
    once = RetryPolicy(attempts=1)  # a 429 is counted here, not waited out
    with (
        production_api(limited, tmp_path / "api-1.log", workers=1) as first,
        production_api(limited, tmp_path / "api-2.log", workers=1) as second,
        Client(first.url, key, retry=once) as one,
        Client(second.url, key, retry=once) as two,
    ):
        clients = [one, two]
        allowed = [0, 0]
        for i in range(LIMIT * 3):  # alternating between the two processes
            try:
                clients[i % 2].request("GET", "/v1/models")
                allowed[i % 2] += 1
            except ApiError as exc:
                assert exc.status == 429 and exc.code == "rate_limited"
    assert sum(allowed) == LIMIT and min(allowed) >= LIMIT // 2  # both served, one budget


@pytest.fixture
def bounded(settings, app):
    """Make apps whose queue has room for `room` more jobs in all, `per_tenant` per tenant."""
    made = []

    def make(per_tenant: int, room: int):
        total = queued_counts(app, "nobody")[1]  # jobs left queued by earlier tests
        bounds = {"max_queued_per_tenant": per_tenant, "max_queued_jobs": total + room}
        made.append(create_app(settings.with_overrides(**bounds)))
        return made[-1]

    yield make
    for each in made:
        each.extensions["captioner"].db.dispose()


def submit(client, headers, images: int):
    """POST one image to /v1/jobs, or `images` > 1 to /v1/batches."""
    if images == 1:
        return client.post("/v1/jobs", json={"image": b64(png())}, headers=headers)
    return client.post("/v1/batches", json={"images": [b64(png())] * images}, headers=headers)


def assert_queue_full(response, who: str) -> None:
    """A 503 queue_full naming `who` ("this tenant" or "the service"), with Retry-After."""
    assert response.status_code == 503, response.get_json()
    error = response.get_json()
    assert error["code"] == "queue_full" and f"{who} has" in error["detail"]
    assert response.headers["Retry-After"] == "10"


def queued(app, headers) -> int:
    """How many of the key's tenant's jobs are queued, as the API lists them."""
    return len(app.test_client().get("/v1/jobs?status=queued", headers=headers).json["jobs"])


def test_a_tenant_over_its_bound_gets_503_and_another_tenant_is_still_accepted(bounded, queue):
    app, tenant = bounded(per_tenant=3, room=100), new_tenant()
    client, first, other = app.test_client(), key_for(app, tenant), key_for(app)
    assert [submit(client, first, 1).status_code for _ in range(3)] == [202] * 3
    assert_queue_full(submit(client, first, 1), "this tenant")
    assert_queue_full(submit(client, first, 2), "this tenant")
    assert queued(app, first) == queued_counts(app, tenant)[0] == 3  # none stored when refused
    assert submit(client, other, 1).status_code == 202


def test_a_batch_counts_all_its_images(bounded, queue):
    app = bounded(per_tenant=5, room=100)
    client, headers = app.test_client(), key_for(app)
    assert submit(client, headers, 3).status_code == 202
    assert_queue_full(submit(client, headers, 3), "this tenant")  # 3 + 3 > 5
    assert submit(client, headers, 2).status_code == 202  # exactly 5
    assert_queue_full(submit(client, headers, 1), "this tenant")
    assert queued(app, headers) == 5


def test_a_batch_of_urls_counts_all_its_urls(bounded, queue):
    """Images named by URL count toward the bound as uploads do (no address is contacted at
    submission: only a worker fetches them)."""
    app = bounded(per_tenant=5, room=100)
    app.extensions["captioner"].resolver = no_dns  # a name that does not resolve yet passes
    client, headers = app.test_client(), key_for(app)
    urls = [f"http://images.example/{i}.png" for i in range(3)]
    assert client.post("/v1/batches", json={"image_urls": urls}, headers=headers).status_code == 202
    refused = client.post("/v1/batches", json={"image_urls": urls}, headers=headers)
    assert_queue_full(refused, "this tenant")  # 3 + 3 > 5
    one = client.post("/v1/jobs", json={"image_url": urls[0]}, headers=headers)
    assert one.status_code == 202 and queued(app, headers) == 4


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/jobs", {"json": {"image": b64(b"not an image")}}, 415),
        ("/v1/jobs", {"data": {"image": (io.BytesIO(b""), "empty.png")}}, 400),
        ("/v1/batches", {"json": {"images": [b64(png()), b64(b"not an image")]}}, 415),
        ("/v1/batches", {"json": {"image_urls": ["http://10.0.0.1/x.png"]}}, 400),
    ],
)
def test_a_bad_submission_gets_its_4xx_when_the_queue_is_full(bounded, queue, path, body, status):
    """The bound applies only to what would be accepted: no pointless retry is invited."""
    app = bounded(per_tenant=1, room=100)
    client, headers = app.test_client(), key_for(app)
    assert submit(client, headers, 1).status_code == 202  # the tenant's queue is now full
    answer = client.post(path, headers=headers, **body)
    assert answer.status_code == status, answer.get_json()


def test_the_global_bound_refuses_every_tenant(bounded, queue):
    app = bounded(per_tenant=100, room=3)
    client, first, other = app.test_client(), key_for(app), key_for(app)
    assert submit(client, first, 2).status_code == 202
    assert_queue_full(submit(client, other, 2), "the service")  # 2 + 2 > 3 in all
    assert submit(client, other, 1).status_code == 202
    assert_queue_full(submit(client, first, 1), "the service")
    assert queued_counts(app, "nobody")[1] == app.extensions["captioner"].settings.max_queued_jobs


def test_queued_by_owner_counts_only_queued_jobs_on_both_databases(db):
    with db.session() as session:
        base = jobs.queued_by_owner(session)
        made = [
            jobs.create_job(session, new_job(owner=owner)).id
            for owner in ("owner-a", "owner-a", "owner-a", "owner-b")
        ]
    with db.session() as session:
        jobs.cancel_job(session, made[0])
        jobs.claim_jobs(session, [made[1]], lease_seconds=60, max_attempts=3)  # running
    with db.session() as session:
        counts = jobs.queued_by_owner(session)
    assert Counter(counts) - Counter(base) == Counter({"owner-a": 1, "owner-b": 1})


def test_queue_counts_are_read_once_per_period_and_count_this_process_s_own(db):
    counts, owner = QueuedCounts(db, max_age_s=0.5), new_tenant()
    assert counts.of(owner)[0] == 0
    with db.session() as session:
        jobs.create_job(session, new_job(owner=owner))  # another process's submission
    counts.add(owner, 2)  # this process's
    assert counts.of(owner)[0] == 2  # not read again yet: the other one is missed
    time.sleep(0.6)
    assert counts.of(owner)[0] == 1  # read again: what the database holds
