"""Training runs and the registry in the store, on Postgres and SQLite: leases, cancel, the
progress throttle, resending after a worker death, and one active version under concurrency."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from store import registry, training
from store.models import Delivery, ModelVersion, TrainingRun, utcnow


def new_run(db, **changes) -> TrainingRun:
    fields = dict(owner="tenant", dataset={"type": "shapes", "size": 40, "seed": 0},
                  hyperparameters={"epochs": 1}, promotion={"policy": "never", "metric": "bleu4"},
                  webhook_url="http://h.test/r",
                  webhook_events=["start", "progress", "completed"])  # fmt: skip
    with db.session() as session:
        return training.create_run(session, training.NewRun(**(fields | changes)))


def claim(db, run, worker="w1", lease_s=60.0, max_attempts=3):
    with db.session() as session:
        return training.claim_run(session, run.id, worker, lease_s, max_attempts)


def events(db, run) -> list[tuple[str, int]]:
    with db.session() as session:
        query = select(Delivery.event, Delivery.sequence).where(Delivery.resource_id == run.id)
        return sorted(session.execute(query).all(), key=lambda row: (row[0], row[1]))


def test_a_run_is_claimed_once_and_announces_its_start(db):
    run = new_run(db)
    claimed = claim(db, run)
    assert (claimed.status, claimed.attempts, claimed.worker) == ("running", 1, "w1")
    assert claim(db, run, "w2") is None
    assert events(db, run) == [("training_run.started", 0)]


def test_progress_is_announced_at_most_once_per_throttle_period(db):
    run = new_run(db)
    claim(db, run)
    with db.session() as session:
        for step in range(5):
            assert training.heartbeat(session, run.id, "w1", 60, {"step": step}).ours
    assert events(db, run).count(("training_run.progress", 1)) == 1
    assert len([e for e in events(db, run) if e[0] == "training_run.progress"]) == 1
    with db.session() as session:  # as if the last announcement were 11 s ago
        past = utcnow() - timedelta(seconds=11)
        session.execute(update(TrainingRun).where(TrainingRun.id == run.id)
                        .values(progress_announced_at=past))  # fmt: skip
        training.heartbeat(session, run.id, "w1", 60, {"step": 6})
        stored = training.get_run(session, run.id)
        assert stored.progress == {"step": 6}
    assert [e for e in events(db, run) if e[0] == "training_run.progress"] == [
        ("training_run.progress", 1), ("training_run.progress", 2)]  # fmt: skip


def test_cancel_ends_a_queued_run_and_asks_a_running_one(db):
    queued = new_run(db)
    with db.session() as session:
        assert training.cancel_run(session, queued.id).status == "canceled"
        assert training.cancel_run(session, queued.id) is None
    running = new_run(db)
    claim(db, running)
    with db.session() as session:
        asked = training.cancel_run(session, running.id)
        assert asked.status == "running" and asked.cancel_requested_at is not None
        assert training.heartbeat(session, running.id, "w1", 60).cancel is True
        assert training.finish_run(session, running.id, "w1", training.RunStatus.CANCELED)
    assert ("training_run.completed", 0) in events(db, running)


def test_a_dead_workers_run_is_resent_and_fails_after_too_many_attempts(db):
    run = new_run(db)
    for attempt in (1, 2):
        assert claim(db, run, f"w{attempt}", lease_s=-1, max_attempts=2).attempts == attempt
        with db.session() as session:
            assert run.id in training.runs_to_resend(session, timedelta(seconds=30))
            assert training.heartbeat(session, run.id, f"w{attempt}", 60).ours is False
    assert claim(db, run, "w3", max_attempts=2) is None
    with db.session() as session:
        failed = training.get_run(session, run.id)
    assert (failed.status, failed.error_code) == ("failed", "too_many_attempts")


def register(db) -> int:
    with db.session() as session:
        new = registry.NewVersion(digest="d", encoder_weights="seed:0", encoder_fingerprint="f",
                                  metrics={})  # fmt: skip
        return registry.register(session, new).number


def test_concurrent_promotions_leave_exactly_one_active_version(db):
    numbers = [register(db) for _ in range(6)]
    errors = []

    def promote(number: int) -> None:
        try:
            with db.session() as session:
                registry.promote(session, number)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(n,)) for n in numbers * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if db.engine.dialect.name == "postgresql":
        assert errors == []
    with db.session() as session:
        active = session.scalars(select(ModelVersion).where(ModelVersion.active)).all()
    assert len(active) == 1


@pytest.mark.parametrize("name", ["v12", "12"])
def test_version_names(name):
    assert registry.version_number(name) == 12
    assert registry.version_number("vv1") is None and registry.version_number("v-1") is None
