"""The inference worker's resident state: the served model, the micro-batcher, a chunk's path.

`Inference.caption()` runs a chunk of jobs in one of the pool's threads. A Celery message wakes
the worker; the chunk is whatever is next in the queue, tenants taking turns, up to a batch.
Every step is paid once per chunk, not once per job:
- wait for a batch's room (the worker claims only what it will start soon), then claim the chunk
  in one UPDATE that also ends jobs past their deadline or out of attempts;
- fetch the images (one GET per pack; a job's `image_url` through the SSRF guard, once, into
  its key) and decode them in a pool sized to the cores (Pillow releases the GIL), then hand
  them to the batcher, which runs the model on full batches;
- store every result in one transaction, fenced by the claim's attempt token, with the
  attention array in the row, and announce the finished jobs in one Redis round trip.
A heartbeat renews the leases of held jobs until their results are stored. Celery acknowledges
the message only after that.
"""

from __future__ import annotations

import io
import logging
import math
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np

from core.errors import BlobStoreError, ImageError, JobSkipped, TemporaryFailure, UrlError
from core.logs import bind
from core.metrics import (
    BATCH_SIZE,
    IMAGES,
    JOB_SECONDS,
    JOBS_FINISHED,
    JOBS_FLAGGED,
    JOBS_PUT_BACK,
    JOBS_SCORED,
    PREDICT_SECONDS,
    STORE_SECONDS,
)
from core.netguard import Guard
from core.notify import Notifier
from core.settings import Settings
from store import jobs
from store.blobs import open_blob_store
from store.db import Database
from store.images import read_images
from store.tables import as_utc, utcnow
from worker.batcher import MicroBatcher, Slots
from worker.leases import Leases
from worker.outages import Outage
from worker.rollout import Rollout
from worker.urlimages import fetch_image

log = logging.getLogger(__name__)
RETRY_DELAY_S = 5  # a job put back after a temporary failure waits this long (its message too)


@dataclass(frozen=True)
class Captioned:
    """One job's share of a batch: its caption and the batch it ran in."""

    result: object  # model.inference.CaptionResult
    predict_ms: float  # the whole batch's forward pass
    batch_size: int
    model_version: str  # the version that ran the batch (a swap may follow it)


@dataclass(frozen=True)
class Failure:
    """A job that can never succeed (its image is missing or unreadable)."""

    code: str
    message: str


Outcome = Captioned | Failure | Exception  # an Exception may pass on a later attempt


class Inference:
    """A loaded model behind a micro-batcher, plus the store it reads jobs from and writes to."""

    def __init__(self, settings: Settings, worker: str, db: Database) -> None:
        self.settings = settings
        self.worker = worker
        self.db = db
        self.blobs = open_blob_store(settings)
        self.notifier = Notifier(settings.broker_url)
        self.rollout = Rollout(settings, worker, db, self.blobs)
        self.rollout.start()
        self.standin = _standin(settings)
        self.batcher = MicroBatcher(
            self._run_batch, settings.batch_max_size, settings.batch_max_wait_ms / 1000
        )
        self.slots = Slots(2 * settings.batch_max_size)  # one batch running, one being prepared
        self.leases = Leases(db, settings.job_lease_seconds)
        self.decoders = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="decode")
        self.guard = Guard.from_allow(settings.url_allow)  # for jobs with an image_url
        self.blob_store = Outage("blob store")

    def caption(self) -> str:
        """Claim the next queued jobs (a batch's worth at most) and run them to terminal
        statuses; returns what happened, for the log.

        A message is a wake-up: the claim takes whichever jobs are next in fair order, the
        message's or others (`store.jobs.fair_pick`), so jobs sent one per message still run in full
        batches, and a later message whose jobs were taken finds others or nothing. Raises
        JobSkipped when nothing is claimable, and TemporaryFailure (after putting those jobs
        back in the queue) when some may succeed on a later attempt.
        """
        with self.slots.taking(self.settings.batch_max_size) as room, ExitStack() as held:
            with self.batcher.expecting():
                claim = self._claim(room.count)
                room.keep(len(claim.jobs))  # the rest is free for the next claim at once
                bind(batch_id=claim.jobs[0].batch_id)  # for this task's lines (None: none)
                held.enter_context(self.leases.holding(claim))  # until the results are stored
                futures, outcomes = self._submit(claim.jobs)
            for job_id, future in futures.items():
                outcomes[job_id] = _outcome(future)
            return self._settle(claim, outcomes)

    def _claim(self, count: int) -> jobs.Claim:
        settings = self.settings
        with STORE_SECONDS.labels("claim").time(), self.db.session() as session:
            claim = jobs.claim_jobs(
                session,
                None,
                settings.job_lease_seconds,
                settings.job_max_attempts,
                self.worker,
                limit=count,
            )
        if claim.ended:  # past their deadline or out of attempts
            self.notifier.finished_many(claim.ended)
        if not claim.jobs:
            raise JobSkipped("nothing claimable")
        return claim

    def _submit(self, claimed: list) -> tuple[dict, dict[uuid.UUID, Outcome]]:
        """Prepare the images and queue them for the model: futures, and the jobs that failed."""
        images: dict = read_images(self.blobs, claimed, keep_errors=True)
        by_url = [job for job in claimed if images[job.id] is None and job.image_url]
        images |= dict(
            zip([job.id for job in by_url], self.decoders.map(self._fetch, by_url), strict=True)
        )
        prepared = list(self.decoders.map(self._decode, [images[job.id] for job in claimed]))
        ready = [
            (job, image)
            for job, image in zip(claimed, prepared, strict=True)
            if isinstance(image, np.ndarray)
        ]
        outcomes = {
            job.id: image
            for job, image in zip(claimed, prepared, strict=True)
            if not isinstance(image, np.ndarray)
        }
        queued = self.batcher.submit_many(
            [
                ((job.beam_size, job.max_length), (image, job.temperature, job.seed or 0))
                for job, image in ready
            ]
        )
        futures = {job.id: future for (job, _), future in zip(ready, queued, strict=True)}
        return futures, outcomes

    def _fetch(self, job) -> bytes | Failure | BlobStoreError:
        """A by-URL job's image, fetched once and kept under its key (a retry reads it there)."""
        try:
            data, info = fetch_image(job.image_url, self.guard, self.settings)
            self.blobs.put(job.image_key, data, f"image/{info.format.lower()}")
        except (UrlError, ImageError) as exc:
            return Failure(exc.code, exc.message)
        except BlobStoreError as exc:  # the job may pass on a later attempt
            return exc
        return data

    def _decode(self, data: bytes | Failure | BlobStoreError | None) -> Outcome | np.ndarray:
        """Image bytes to encoder input (299, 299, 3), or why the job can never run."""
        from model.images import decode_image

        if isinstance(data, Failure | Exception):  # a by-URL image that could not be fetched
            return data
        if data is None:
            return Failure("image_missing", "the job's image is no longer in the blob store")
        try:
            return decode_image(data, self.settings.max_image_pixels)
        except ImageError as exc:
            return Failure(exc.code, str(exc))

    def _run_batch(self, options: tuple[int, int], items: list[tuple]) -> list[Captioned]:
        """Caption one batch of (image (299, 299, 3), temperature, seed) with the same beam size
        and length cap."""
        from model.inference import Sampling

        beam_size, max_length = options
        images = [image for image, _, _ in items]
        sampling = Sampling.of([(temperature, seed) for _, temperature, seed in items])
        served = self.rollout.served  # one model for the whole batch, even if a swap comes
        captioner = self.standin or served.captioner
        started = time.perf_counter()
        results = captioner.caption_batch(np.stack(images), beam_size, max_length, sampling)
        predict_ms = (time.perf_counter() - started) * 1000
        PREDICT_SECONDS.observe(predict_ms / 1000)
        BATCH_SIZE.observe(len(images))
        IMAGES.inc(len(images))
        log.info(
            "batch of %d (beam %d) on %s in %.0f ms",
            len(images),
            beam_size,
            served.version,
            predict_ms,
        )
        return [Captioned(r, predict_ms, len(images), served.version) for r in results]

    def _settle(self, claim: jobs.Claim, outcomes: dict[uuid.UUID, Outcome]) -> str:
        """Store every outcome of the claim in one transaction; returns a summary for the log.

        A job whose image the blob store could not give or keep waits for the store without
        spending its attempt (`worker.outages`); other errors spend it."""
        results = {i: _stored(o) for i, o in outcomes.items() if isinstance(o, Captioned)}
        failures = {i: o for i, o in outcomes.items() if isinstance(o, Failure)}
        waiting = [i for i, o in outcomes.items() if isinstance(o, BlobStoreError)]
        wait_s = self._blob_store_wait(claim, outcomes, waiting)
        retry = []
        for job in claim.jobs:
            error = outcomes[job.id]
            if isinstance(error, BlobStoreError):
                continue
            if isinstance(error, Exception) and job.attempts < self.settings.job_max_attempts:
                log.warning(
                    "job %s attempt %d failed (%r); requeued",
                    job.id,
                    job.attempts,
                    error,
                    extra={"job_id": str(job.id)},
                )
                retry.append(job.id)
            elif isinstance(error, Exception):
                failures[job.id] = Failure("caption_failed", f"{type(error).__name__}: {error}")
        with STORE_SECONDS.labels("store").time(), self.db.session() as session:
            finished = jobs.finish_jobs(session, claim.token, results)
            failed = [
                job_id
                for job_id, failure in failures.items()
                if jobs.fail_job(session, job_id, failure.code, failure.message, claim.token)
            ]
            jobs.release_jobs(session, claim.token, retry, RETRY_DELAY_S)
            jobs.release_jobs(session, claim.token, waiting, wait_s, refund=True)
        self._log_ended(claim, results, finished, failures, failed)
        count_ended(claim.jobs, finished, {job_id: failures[job_id].code for job_id in failed})
        count_flagged(results, finished)
        self.notifier.finished_many(finished + failed)
        if retry or waiting:
            delay = max(RETRY_DELAY_S if retry else 0, wait_s)
            raise TemporaryFailure(", ".join(map(str, retry + waiting)), delay)
        return f"{len(finished)} succeeded, {len(failed)} failed"

    def _blob_store_wait(
        self, claim: jobs.Claim, outcomes: dict[uuid.UUID, Outcome], waiting: list[uuid.UUID]
    ) -> float:
        """Seconds the jobs the blob store failed should wait (0: none did); notes whether the
        store worked for this claim."""
        if waiting:
            JOBS_PUT_BACK.labels("blob_store").inc(len(waiting))
            return self.blob_store.failed(outcomes[waiting[0]])
        if any(job.image_key for job in claim.jobs):  # it read or wrote an object
            self.blob_store.worked()
        return 0.0

    def _log_ended(self, claim, results, finished, failures, failed) -> None:
        for job_id in (set(results) - set(finished)) | (set(failures) - set(failed)):
            log.warning(
                "job %s: attempt %s is stale (the job was claimed again or ended); "
                "its outcome is dropped",
                job_id,
                claim.token,
            )
        for job_id in failed:
            log.info(
                "job %s failed: %s: %s",
                job_id,
                failures[job_id].code,
                failures[job_id].message,
                extra={"job_id": str(job_id)},
            )

    def close(self) -> None:
        """Stop following the registry, finish queued batches, stop the heartbeat."""
        self.rollout.stop()
        self.batcher.stop(timeout=60)
        self.leases.stop()
        self.decoders.shutdown(wait=False)


def count_ended(claimed: list, finished: list, failed: dict[uuid.UUID, str]) -> None:
    """Jobs ended, by status and code; latency from creation (and waiting before the start) of
    the ones that succeeded."""
    now = utcnow()
    for job in claimed:
        if job.id in failed:
            JOBS_FINISHED.labels("failed", failed[job.id]).inc()
        elif job.id in finished:
            JOBS_FINISHED.labels("succeeded", "").inc()
            created = as_utc(job.created_at)
            JOB_SECONDS.labels("end_to_end").observe((now - created).total_seconds())
            if job.started_at:
                JOB_SECONDS.labels("queue_wait").observe(
                    (as_utc(job.started_at) - created).total_seconds()
                )


def count_flagged(results: dict[uuid.UUID, jobs.JobResult], finished: list) -> None:
    """Jobs stored with an out-of-distribution score, and those flagged, by the version that
    captioned them."""
    for job_id in finished:
        result = results[job_id]
        if result.ood is not None:
            JOBS_SCORED.labels(result.model_version).inc()
            JOBS_FLAGGED.labels(result.model_version).inc(bool(result.ood.get("flagged")))


def _outcome(future) -> Outcome:
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - the batch failed; its jobs may try again
        return exc


def _stored(captioned: Captioned) -> jobs.JobResult:
    """The row values of a captioned job, its attention as .npy bytes (T, 64) float16."""
    result = captioned.result
    attention = result.attention.astype(np.float16)  # (T, 64)
    buffer = io.BytesIO()
    np.save(buffer, attention, allow_pickle=False)
    return jobs.JobResult(
        caption=result.text,
        tokens=result.tokens,
        token_log_probs=result.log_probs,
        model_version=captioned.model_version,
        attention=buffer.getvalue(),
        attention_shape=list(attention.shape),
        predict_ms=captioned.predict_ms,
        batch_size=captioned.batch_size,
        **limits(result),
    )


def limits(result) -> dict:
    """A CaptionResult's confidence and OOD score as row values (None for a model without them:
    older bundles, the stand-in; and for a value JSON cannot carry, NaN or infinite)."""
    confidence, ood = result.confidence, result.ood
    if confidence is not None:
        confidence = min(max(float(confidence), 0.0), 1.0) if math.isfinite(confidence) else None
    if ood is not None and not all(map(math.isfinite, (ood.score, ood.threshold))):
        log.warning("an OOD score of %r over %r is not stored", ood.score, ood.threshold)
        ood = None
    if ood is not None:
        ood = {
            "score": float(ood.score),
            "threshold": float(ood.threshold),
            "flagged": bool(ood.flagged),
        }
    return {"confidence": confidence, "ood": ood}


def _standin(settings: Settings):
    """The fixed-cost stand-in model when benchmarks or tests ask for it, else None."""
    if settings.bench_standin_model_ms is None:
        return None
    from model.standin import StandInCaptioner

    log.warning(
        "BENCHMARK MODE: the model is replaced by a stand-in costing %g ms per batch",
        settings.bench_standin_model_ms,
    )
    return StandInCaptioner(settings.bench_standin_model_ms)
