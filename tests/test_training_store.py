"""Training runs and the registry in the store, on Postgres and SQLite: leases, cancel, the
progress throttle, resending after a worker death, one active version under concurrency, each
version's architecture; and the training worker's generated scenes set."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select, update

from core.settings import Settings
from model.data import load_dataset
from store import registry, training
from store.blobs import LocalBlobStore
from store.payloads import model_json, run_json
from store.tables import Delivery, ModelVersion, TrainingRun, utcnow
from worker.bundles import register_bundle
from worker.training import Training


def new_run(db, **changes) -> TrainingRun:
    fields = dict(
        owner="tenant",
        dataset={"type": "shapes", "size": 40, "seed": 0},
        hyperparameters={"epochs": 1},
        promotion={"policy": "never", "metric": "bleu4"},
        webhook_url="http://h.test/r",
        webhook_events=["start", "progress", "completed"],
    )
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
        session.execute(
            update(TrainingRun).where(TrainingRun.id == run.id).values(progress_announced_at=past)
        )
        training.heartbeat(session, run.id, "w1", 60, {"step": 6})
        stored = training.get_run(session, run.id)
        assert stored.progress == {"step": 6}
    assert [e for e in events(db, run) if e[0] == "training_run.progress"] == [
        ("training_run.progress", 1),
        ("training_run.progress", 2),
    ]


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


def register(db, **changes) -> int:
    with db.session() as session:
        new = registry.NewVersion(
            digest="d", encoder_weights="seed:0", encoder_fingerprint="f", metrics={}, **changes
        )
        return registry.register(session, new).number


def test_a_version_keeps_its_architecture_and_its_payload_shows_it(db):
    transformer = {"decoder": "transformer", "embedding_dim": 64, "heads": 4, "layers": 1}
    number, unknown = register(db, architecture=transformer), register(db)
    with db.session() as session:
        assert registry.get_version(session, number).architecture == transformer
        assert model_json(registry.get_version(session, number))["architecture"] == transformer
        assert model_json(registry.get_version(session, unknown))["architecture"] is None


def test_a_runs_architecture_shows_apart_from_its_hyperparameters(db):
    block = {"decoder": "transformer", "embedding_dim": 64, "heads": 4}
    run = new_run(db, hyperparameters={"epochs": 1, "model": block})
    body = run_json(run)
    assert (body["hyperparameters"], body["model"]) == ({"epochs": 1}, block)
    assert run_json(new_run(db))["model"] is None  # a fine-tune, or a run from before


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


def test_a_registered_bundle_records_the_architecture_its_config_names(db, tmp_path):
    blobs = LocalBlobStore(tmp_path / "blobs")
    transformer = {"vocab_size": 40, "decoder": "transformer", "embedding_dim": 64, "heads": 4}
    numbers = [
        register_bundle(db, blobs, fake_bundle(tmp_path / name, model))
        for name, model in (("new", transformer), ("format1", {"vocab_size": 40}))
    ]
    with db.session() as session:
        stored = [registry.get_version(session, n).architecture for n in numbers]
    assert stored == [transformer, {"decoder": "gru", "vocab_size": 40}]  # format 1: a GRU


def fake_bundle(folder: Path, model: dict) -> Path:
    """The files register_bundle reads (it never loads the weights)."""
    folder.mkdir()
    config = {"format": 2, "model": model, "encoder": {"weights": "seed:0", "fingerprint": "f"}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "decoder.weights.h5").write_bytes(folder.name.encode())
    return folder


def test_the_training_worker_makes_a_scenes_set_once(db, tmp_path):
    worker = Training(Settings(tmp_path, "sqlite://", "filesystem://", None), "w1", db)
    run = new_run(db, dataset={"type": "scenes", "size": 20, "seed": 3})
    beat = SimpleNamespace(progress=None)
    folder = worker.dataset_folder(run, beat)
    assert folder == tmp_path / "datasets" / "scenes-20-3"
    assert beat.progress == {"phase": "dataset", "done": 20, "total": 20}
    splits = load_dataset(folder)
    assert (len(splits["train"]), len(splits["val"])) == (16, 4)
    assert any(
        " above " in c or " left of " in c or " below " in c or " right of " in c
        for c in splits["train"][0].captions
    )
    beat.progress = None
    assert worker.dataset_folder(run, beat) == folder and beat.progress is None  # reused
