"""Deleting and purging in the store, on Postgres and SQLite: what goes, what stays, which blobs
to delete, and late jobs aborted by the sweeper's query."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import func, select, update

from core.errors import BlobStoreError
from store import batches, jobs, retention, training
from store.blob_keys import attention_key, attention_png_key
from store.blobs import LocalBlobStore
from store.deliveries import list_deliveries
from store.tables import Batch, Dataset, DeliveryAttempt, Job, TrainingRun, utcnow
from tests.helpers import new_job

HOOK = "http://h.test/hook"


def own_job(**changes) -> jobs.NewJob:
    """A NewJob whose image is its own blob (the helper's default key is shared by all)."""
    job_id = uuid.uuid4()
    return new_job(id=job_id, image_key=f"images/{job_id}", **changes)


def succeeded(db) -> uuid.UUID:
    """A job run to success (announced to HOOK on start and completion)."""
    new = own_job(webhook_url=HOOK, webhook_events=["start", "completed"])
    done = jobs.JobResult(
        caption="a circle",
        tokens=["a", "circle"],
        token_log_probs=[-1, -1],
        model_version="v1",
        attention=b"npy",
        attention_shape=[2, 64],
        predict_ms=1.0,
        batch_size=1,
    )
    with db.session() as s:
        jobs.create_job(s, new)
        claim = jobs.claim_jobs(s, [new.id], 60, 3)
        jobs.finish_jobs(s, claim.token, {new.id: done})
    return new.id


def count(db, model, *where) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def test_an_ended_job_goes_with_its_deliveries_and_names_its_blobs(db):
    job_id = succeeded(db)
    old_attention = attention_key(job_id)  # as jobs before migration 0005 kept it
    with db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(attention_key=old_attention))
        delivery = list_deliveries(s, job_id)[0]
        s.add(
            DeliveryAttempt(
                delivery_id=delivery.id,
                number=1,
                started_at=utcnow(),
                latency_ms=3.0,
                status_code=200,
            )
        )
    with db.session() as s:
        removal = retention.delete_jobs(s, [job_id])
    assert removal.deleted == [job_id] and removal.blocked_by == []
    assert removal.blob_keys == [f"images/{job_id}", old_attention, attention_png_key(job_id)]
    assert count(db, Job, Job.id == job_id) == 0
    assert count(db, DeliveryAttempt, DeliveryAttempt.delivery_id == delivery.id) == 0
    with db.session() as s:
        assert list_deliveries(s, job_id) == []


def test_a_job_whose_image_lives_in_its_row_leaves_no_image_blob(db):
    with db.session() as s:
        job_id = jobs.create_job(s, new_job(image_key="", image_data=b"png bytes")).id
    with db.session() as s:
        assert retention.delete_jobs(s, [job_id]).blob_keys == []  # the bytes went with the row


def test_a_queued_job_goes_a_running_one_blocks_and_nothing_is_deleted(db):
    with db.session() as s:
        queued, running = (jobs.create_job(s, own_job()).id for _ in range(2))
        jobs.claim_jobs(s, [running], 60, 3)
    with db.session() as s:
        removal = retention.delete_jobs(s, [queued, running])
    assert (removal.deleted, removal.blocked_by) == ([], [running])
    assert count(db, Job, Job.id.in_([queued, running])) == 2
    with db.session() as s:
        assert retention.delete_jobs(s, [queued]).blob_keys == [f"images/{queued}"]
    assert count(db, Job, Job.id == queued) == 0


def test_a_pack_goes_with_the_last_job_that_uses_it_and_the_batch_with_its_last_job(db):
    packs = [f"images/packs/{uuid.uuid4()}" for _ in range(2)]
    placed = [(packs[0], 0), (packs[0], 10), (packs[1], 0)]
    new = [new_job(image_key=key, image_offset=offset) for key, offset in placed]
    with db.session() as s:
        batch, members = batches.create_batch(s, "tenant", new, HOOK, ["completed"])
        for job in members:
            jobs.cancel_job(s, job.id)  # the last one records batch.completed
    first, second, third = (job.id for job in members)
    with db.session() as s:
        assert retention.delete_jobs(s, [first]).blob_keys == []  # the pack is still used
    with db.session() as s:
        removal = retention.delete_jobs(s, [second])
    assert (removal.blob_keys, removal.batches) == ([packs[0]], [])
    with db.session() as s:
        assert [d.event for d in list_deliveries(s, batch.id)] == ["batch.completed"]
        removal = retention.delete_batch(s, batch.id)
    assert (removal.deleted, removal.batches) == ([third], [batch.id])
    assert removal.blob_keys == [packs[1]]
    assert count(db, Batch, Batch.id == batch.id) == 0
    with db.session() as s:
        assert list_deliveries(s, batch.id) == []


def test_a_batch_with_a_running_job_stays_whole(db):
    with db.session() as s:
        batch, members = batches.create_batch(s, "tenant", [own_job(), own_job()])
        jobs.claim_jobs(s, [members[0].id], 60, 3)
    with db.session() as s:
        assert retention.delete_batch(s, batch.id).blocked_by == [members[0].id]
    assert count(db, Job, Job.batch_id == batch.id) == 2


def test_purging_takes_jobs_that_ended_before_the_cutoff_a_page_at_a_time(db):
    with db.session() as s:
        ids = [jobs.create_job(s, own_job(owner="purge")).id for _ in range(6)]
        for job_id in ids[:5]:
            jobs.cancel_job(s, job_id)  # the sixth stays queued
        for days, job_id in zip([5, 4, 3, 3], ids, strict=False):  # the fifth ended now
            s.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(finished_at=utcnow() - timedelta(days=days))
            )
    cutoff = utcnow() - timedelta(days=2)
    with db.session() as s:
        assert set(retention.purge_ended_jobs(s, cutoff, limit=3).deleted) == set(ids[:3])
    with db.session() as s:
        assert retention.purge_ended_jobs(s, cutoff, limit=3).deleted == [ids[3]]
    with db.session() as s:
        assert retention.purge_ended_jobs(s, cutoff, limit=3) == retention.Removal()
    assert count(db, Job, Job.owner == "purge") == 2


def test_late_queued_jobs_are_aborted_and_announced_others_are_left(db):
    past, future = utcnow() - timedelta(seconds=1), utcnow() + timedelta(hours=1)
    late = own_job(deadline_at=past, webhook_url=HOOK, webhook_events=["completed"])
    with db.session() as s:
        for new in (late, own_job(deadline_at=future), own_job()):
            jobs.create_job(s, new)
        started = jobs.create_job(s, own_job(deadline_at=future)).id
        jobs.claim_jobs(s, [started], 60, 3)
        s.execute(update(Job).where(Job.id == started).values(deadline_at=past))
    with db.session() as s:
        assert jobs.abort_late_jobs(s) == [late.id]  # a running job is past caring
    with db.session() as s:
        job = jobs.get_job(s, late.id)
        assert (job.status, job.error_code) == ("aborted", "deadline_passed")
        assert job.finished_at is not None
        assert [d.event for d in list_deliveries(s, late.id)] == ["job.completed"]
        assert jobs.abort_late_jobs(s) == []


def test_a_dataset_in_use_stays_and_ended_runs_keep_their_description(db):
    dataset = Dataset(
        id=uuid.uuid4(),
        owner="tenant",
        name="tiny",
        archive_key="datasets/x/archive",
        format="zip",
        bytes=10,
        unpacked_bytes=20,
        splits={},
        images=1,
        captions=1,
    )
    described = {"type": "upload", "id": str(dataset.id), "name": "tiny"}
    with db.session() as s:
        s.add(dataset)
        s.flush()
        run = training.create_run(
            s,
            training.NewRun(
                owner="tenant",
                dataset=described,
                dataset_id=dataset.id,
                hyperparameters={},
                promotion={},
            ),
        )
    with db.session() as s:
        assert retention.delete_dataset(s, dataset.id).blocked_by == [run.id]
    with db.session() as s:
        s.execute(update(TrainingRun).where(TrainingRun.id == run.id).values(status="succeeded"))
    with db.session() as s:
        removal = retention.delete_dataset(s, dataset.id)
    assert (removal.deleted, removal.blob_keys) == ([dataset.id], ["datasets/x/archive"])
    with db.session() as s:
        kept = training.get_run(s, run.id)
        assert (kept.dataset_id, kept.dataset) == (None, described)
        assert s.get(Dataset, dataset.id) is None


class FailingStore(LocalBlobStore):
    """A local store whose deletes of one key fail, as an unreachable S3 would."""

    def delete(self, key: str) -> None:
        if key == "images/b":
            raise BlobStoreError("unreachable")
        super().delete(key)


def test_blobs_are_deleted_and_one_that_fails_is_left_behind(tmp_path, caplog):
    blobs = FailingStore(tmp_path)
    for key in ("images/a", "images/b", "images/c"):
        blobs.put(key, b"x")
    assert retention.delete_blobs(blobs, ["images/a", "images/b", "images/c", "images/gone"]) == 3
    assert blobs.list("") == ["images/b"]
    assert "images/b left behind" in caplog.text
