"""The job store on real Postgres (and SQLite for the embedded mode): migrations and lifecycle."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text, update

from harness.stack import fresh_postgres
from store import jobs
from store.migrate import downgrade, upgrade
from store.tables import Base, Job, JobStatus, utcnow
from tests.helpers import new_job


def result(**changes) -> jobs.JobResult:
    fields = dict(
        caption="a red circle",
        tokens=["a", "red", "circle"],
        token_log_probs=[-0.1, -0.2, -0.3],
        model_version="v1",
        attention=b"npy bytes",
        attention_shape=[3, 64],
        predict_ms=12.5,
        batch_size=4,
    )
    return jobs.JobResult(**(fields | changes))


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_migrations_go_up_down_and_up_and_match_the_models(kind, tmp_path):
    with fresh_postgres() if kind == "postgres" else _sqlite(tmp_path) as url:
        upgrade(url)
        engine = create_engine(url)
        assert {"jobs", "batches"} <= set(inspect(engine).get_table_names())
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diff == []  # the migration creates exactly what the models declare
        downgrade(url)
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(url)
        assert "jobs" in inspect(engine).get_table_names()
        engine.dispose()


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_migration_0011_names_every_earlier_version_a_gru(kind, tmp_path):
    with fresh_postgres() if kind == "postgres" else _sqlite(tmp_path) as url:
        upgrade(url, "0010")
        engine = create_engine(url)
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO model_versions (bundle_key, digest, encoder_weights,"
                    " encoder_fingerprint, metrics, active, created_at) VALUES ('models/v1/', 'd',"
                    " 'seed:0', 'f', '{}', false, '2026-11-01 00:00:00+00')"
                )
            )
        upgrade(url)
        with engine.connect() as connection:
            stored = connection.execute(text("SELECT architecture FROM model_versions")).scalar()
        assert (json.loads(stored) if isinstance(stored, str) else stored) == {"decoder": "gru"}
        downgrade(url, "0010")
        assert "architecture" not in {
            c["name"] for c in inspect(engine).get_columns("model_versions")
        }
        engine.dispose()


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_migration_0015_adds_the_caption_limits_and_takes_them_back(kind, tmp_path):
    with fresh_postgres() if kind == "postgres" else _sqlite(tmp_path) as url:
        upgrade(url, "0014")
        engine = create_engine(url)

        def limits() -> set[str]:
            return {c["name"] for c in inspect(engine).get_columns("jobs")} & {"confidence", "ood"}

        assert limits() == set()
        upgrade(url)
        assert limits() == {"confidence", "ood"}
        downgrade(url, "0014")
        assert limits() == set()
        engine.dispose()


class _sqlite:
    def __init__(self, tmp_path):
        self.url = f"sqlite:///{tmp_path / 'm.db'}"

    def __enter__(self) -> str:
        return self.url

    def __exit__(self, *exc) -> None:
        pass


def test_a_job_runs_once_and_its_result_is_final(db):
    with db.session() as s:
        job_id = jobs.create_job(s, new_job()).id
    with db.session() as s:
        claim = jobs.claim_jobs(s, [job_id], lease_seconds=60, max_attempts=3)
        (claimed,) = claim.jobs
        assert claimed.status == "running" and claimed.attempts == 1
        assert claimed.attempt_token == claim.token
    with db.session() as s:
        assert jobs.claim_jobs(s, [job_id], 60, 3).jobs == []  # leased: nobody else takes it
        assert jobs.finish_jobs(s, claim.token, {job_id: result()}) == [job_id]
    with db.session() as s:
        again = {job_id: result(caption="again")}
        assert jobs.finish_jobs(s, claim.token, again) == []  # terminal stays
        assert not jobs.fail_job(s, job_id, "x", "y")
        assert not jobs.cancel_job(s, job_id)
        job = jobs.get_job(s, job_id)
        assert (job.status, job.caption, job.batch_size) == ("succeeded", "a red circle", 4)
        assert job.tokens == ["a", "red", "circle"] and job.attention_shape == [3, 64]
        assert job.attention == b"npy bytes"
        assert job.total_ms >= job.queue_ms >= 0
        assert jobs.get_job(s, job_id, owner="someone else") is None


def test_a_result_keeps_its_confidence_and_ood_score(db):
    ood = {"score": 2.5, "threshold": 1.25, "flagged": True}
    with db.session() as s:
        ids = [jobs.create_job(s, new_job()).id for _ in range(2)]
    with db.session() as s:
        claim = jobs.claim_jobs(s, ids, lease_seconds=60, max_attempts=3)
        results = {ids[0]: result(confidence=0.25, ood=ood), ids[1]: result()}
        assert sorted(jobs.finish_jobs(s, claim.token, results)) == sorted(ids)
    with db.session() as s:
        limited, older = (jobs.get_job(s, job_id) for job_id in ids)
        assert (limited.confidence, limited.ood) == (0.25, ood)
        assert (older.confidence, older.ood) == (None, None)  # a model without them


def test_a_canceled_job_is_never_claimed(db):
    with db.session() as s:
        job_id = jobs.create_job(s, new_job()).id
    with db.session() as s:
        assert jobs.cancel_job(s, job_id)
        assert jobs.claim_jobs(s, [job_id], 60, 3).jobs == []
        assert jobs.get_job(s, job_id).status == JobStatus.CANCELED


def test_an_expired_lease_is_claimed_again_until_attempts_run_out(db):
    with db.session() as s:
        job_id = jobs.create_job(s, new_job()).id
    for attempt in (1, 2):
        with db.session() as s:
            (job,) = jobs.claim_jobs(s, [job_id], 60, max_attempts=2).jobs
            assert job.attempts == attempt
            s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow()))
    with db.session() as s:
        # Other tests' jobs share this database: look for this one among those to resend.
        assert job_id in jobs.jobs_to_resend(s, timedelta(minutes=1), timedelta(minutes=1))
        assert jobs.get_job(s, job_id).status == JobStatus.QUEUED  # requeued, lease dropped
        assert jobs.claim_jobs(s, [job_id], 60, max_attempts=2).jobs == []
        job = jobs.get_job(s, job_id)
        assert (job.status, job.error_code) == ("failed", "too_many_attempts")


def test_a_job_past_its_deadline_is_aborted_not_run(db):
    with db.session() as s:
        job_id = jobs.create_job(s, new_job(deadline_at=utcnow() - timedelta(seconds=1))).id
    with db.session() as s:
        assert jobs.claim_jobs(s, [job_id], 60, 3).jobs == []
        assert jobs.get_job(s, job_id).status == JobStatus.ABORTED


def test_jobs_list_newest_first_with_a_cursor(db):
    owner = f"lister-{uuid.uuid4().hex[:6]}"
    with db.session() as s:
        ids = [jobs.create_job(s, new_job(owner=owner)).id for _ in range(5)]
        jobs.cancel_job(s, ids[0])
    with db.session() as s:
        first = jobs.list_jobs(s, owner, limit=3)
        rest = jobs.list_jobs(s, owner, after=(first[-1].created_at, first[-1].id), limit=3)
        assert len(first) == 3 and len(rest) == 2
        assert {j.id for j in first + rest} == set(ids)
        assert [j.id for j in jobs.list_jobs(s, owner, status="canceled")] == [ids[0]]


def test_unsent_and_long_unclaimed_jobs_are_found_by_the_sweeper(db):
    with db.session() as s:
        unsent, sent, stale = (jobs.create_job(s, new_job(owner="sweep")).id for _ in range(3))
        jobs.mark_enqueued(s, [sent, stale])
        s.execute(
            update(Job)
            .where(Job.owner == "sweep")
            .values(created_at=utcnow() - timedelta(minutes=5))
        )
        s.execute(
            update(Job).where(Job.id == stale).values(enqueued_at=utcnow() - timedelta(minutes=10))
        )
    with db.session() as s:
        found = jobs.jobs_to_resend(s, timedelta(minutes=1), timedelta(minutes=5))
        assert unsent in found and stale in found and sent not in found


def test_a_released_job_goes_back_to_the_queue_and_keeps_its_attempt(db):
    with db.session() as s:
        job_id = jobs.create_job(s, new_job()).id
        token = jobs.claim_jobs(s, [job_id], 60, 3, worker="w1").token
    with db.session() as s:
        assert jobs.release_jobs(s, token, [job_id]) == 1
        assert jobs.release_jobs(s, token, [job_id]) == 0
        (job,) = jobs.claim_jobs(s, [job_id], 60, 3, worker="w2").jobs
        assert (job.attempts, job.worker) == (2, "w2")


def test_concurrent_claims_give_each_job_to_one_worker(db):
    with db.session() as s:
        ids = [jobs.create_job(s, new_job()).id for _ in range(40)]

    def claim(_) -> list[uuid.UUID]:
        with db.session() as s:
            return jobs.claim_jobs(s, ids, 60, 3).ids

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(claim, range(4)))
    claimed = [job_id for ids_ in results for job_id in ids_]
    assert sorted(claimed) == sorted(ids)  # every job once, none twice


def test_a_job_released_with_a_wait_is_claimed_again_only_after_it(db):
    with db.session() as s:
        job_id = jobs.create_job(s, new_job()).id
        token = jobs.claim_jobs(s, [job_id], 60, 3).token
    with db.session() as s:
        assert jobs.release_jobs(s, token, [job_id], after_s=0.5) == 1
    with db.session() as s:
        assert jobs.claim_jobs(s, [job_id], 60, 3).jobs == []  # an outage's next claim
    time.sleep(0.6)
    with db.session() as s:
        assert jobs.claim_jobs(s, [job_id], 60, 3).ids == [job_id]


def test_concurrent_claims_of_the_next_jobs_take_different_ones_without_waiting(db):
    with db.session() as s:
        ids = [jobs.create_job(s, new_job()).id for _ in range(40)]

    def claim(_) -> list[uuid.UUID]:
        with db.session() as s:
            return jobs.claim_jobs(s, ids, 60, 3, limit=10).ids

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(claim, range(4)))
    assert [len(taken) for taken in results] == [10] * 4
    assert sorted(job_id for taken in results for job_id in taken) == sorted(ids)


def test_a_claim_skips_the_rows_an_open_claim_holds(db):
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite locks the whole database, not rows")
    with db.session() as s:
        ids = [jobs.create_job(s, new_job()).id for _ in range(4)]
    with db.session() as first, db.session() as second:
        held = jobs.claim_jobs(first, ids, 60, 3, limit=2).ids  # not committed yet
        other = jobs.claim_jobs(second, ids, 60, 3, limit=4).ids  # does not wait for it
    assert len(held) == 2 and sorted(held + other) == sorted(ids)


def test_a_claim_takes_tenants_in_turn_oldest_first(db):
    with db.session() as s:
        backlog = [jobs.create_job(s, new_job(owner="big")).id for _ in range(6)]
        single = jobs.create_job(s, new_job(owner="small")).id
        pair = [jobs.create_job(s, new_job(owner="pair")).id for _ in range(2)]
    among = backlog + [single] + pair
    with db.session() as s:
        first = jobs.claim_jobs(s, among, 60, 3, limit=4)
    with db.session() as s:
        second = jobs.claim_jobs(s, among, 60, 3, limit=3)
    by_start = sorted(first.jobs, key=lambda job: (job.created_at, job.id))
    assert [job.id for job in by_start] == [backlog[0], backlog[1], single, pair[0]]
    assert sorted(second.ids) == sorted([backlog[2], backlog[3], pair[1]])


def test_one_claim_runs_some_jobs_and_ends_the_late_and_the_spent(db):
    with db.session() as s:
        fresh = jobs.create_job(s, new_job()).id
        late = jobs.create_job(s, new_job(deadline_at=utcnow() - timedelta(seconds=1))).id
        spent = jobs.create_job(s, new_job()).id
        s.execute(update(Job).where(Job.id == spent).values(attempts=3))
    with db.session() as s:
        claim = jobs.claim_jobs(s, [fresh, late, spent], 60, max_attempts=3, worker="w")
    assert claim.ids == [fresh] and sorted(claim.ended) == sorted([late, spent])
    with db.session() as s:
        ended = {job_id: jobs.get_job(s, job_id) for job_id in (late, spent)}
        assert (ended[late].status, ended[late].error_code) == ("aborted", "deadline_passed")
        assert (ended[spent].status, ended[spent].error_code) == ("failed", "too_many_attempts")
        assert ended[spent].attempts == 3 and ended[late].attempt_token is None
        assert all(job.finished_at is not None for job in ended.values())


def test_a_stale_attempt_cannot_finish_fail_or_release_a_job_claimed_again(db):
    with db.session() as s:
        job_id = jobs.create_job(s, new_job()).id
    with db.session() as s:
        stale = jobs.claim_jobs(s, [job_id], 60, 3, worker="paused").token
        s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow()))
    with db.session() as s:
        current = jobs.claim_jobs(s, [job_id], 60, 3, worker="alive").token
    with db.session() as s:
        assert jobs.finish_jobs(s, stale, {job_id: result(caption="stale")}) == []
        assert not jobs.fail_job(s, job_id, "caption_failed", "stale", token=stale)
        assert jobs.release_jobs(s, stale, [job_id]) == 0
        assert jobs.extend_leases(s, [jobs.Claim(stale, [jobs.get_job(s, job_id)])], 60) == 0
        assert jobs.finish_jobs(s, current, {job_id: result()}) == [job_id]
    with db.session() as s:
        job = jobs.get_job(s, job_id)
        assert (job.status, job.caption, job.worker) == ("succeeded", "a red circle", "alive")


def test_a_heartbeat_extends_only_the_leases_its_claims_hold(db):
    with db.session() as s:
        held, other = (jobs.create_job(s, new_job()).id for _ in range(2))
    with db.session() as s:
        claim = jobs.claim_jobs(s, [held], lease_seconds=1, max_attempts=3)
        jobs.claim_jobs(s, [other], lease_seconds=1, max_attempts=3)
    with db.session() as s:
        assert jobs.extend_leases(s, [claim], lease_seconds=600) == 1
        leases = {i: jobs.get_job(s, i).lease_expires_at for i in (held, other)}
    assert leases[held] - leases[other] > timedelta(minutes=9)


def test_after_broker_data_loss_every_queued_job_is_resent(db):
    with db.session() as s:
        job_id = jobs.create_job(s, new_job(enqueued_at=utcnow())).id  # just sent
    with db.session() as s:
        assert job_id not in jobs.jobs_to_resend(s, timedelta(minutes=1), timedelta(minutes=5))
        assert job_id in jobs.jobs_to_resend(s, timedelta(minutes=1), timedelta(minutes=5), True)
