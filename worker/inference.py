"""The inference worker's resident state: the served model, the micro-batcher, one job's path.

`Inference.caption(job_id)` runs in one of the pool's threads: claim the job, fetch and decode
its image (overlapping the model's work on the previous batch), hand it to the batcher, then
store the attention array and the caption. Celery acknowledges the message only after that.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from dataclasses import dataclass

import numpy as np

from core.errors import BlobNotFound, ImageError, JobSkipped, TemporaryFailure
from core.notify import Notifier
from core.settings import Settings
from store import jobs
from store.blobs import open_blob_store
from store.db import Database
from store.keys import attention_key
from worker.batcher import MicroBatcher
from worker.rollout import Rollout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Captioned:
    """One job's share of a batch: its caption and the batch it ran in."""

    result: object  # model.inference.CaptionResult
    predict_ms: float  # the whole batch's forward pass
    batch_size: int
    model_version: str  # the version that ran the batch (a swap may follow it)


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
        self.batcher = MicroBatcher(
            self._run_batch, settings.batch_max_size, settings.batch_max_wait_ms / 1000
        )

    def caption(self, job_id: str) -> str:
        """Run one job to a terminal status; returns what happened, for the log.

        Raises JobSkipped when the job is not ours to run, and TemporaryFailure (after putting
        the job back in the queue) when it may succeed on a later attempt.
        """
        with self.batcher.expecting():
            job = self._claim(uuid.UUID(job_id))
            try:
                image = self._fetch(job)
                if image is None:
                    return "failed"
                future = self.batcher.submit((job.beam_size, job.max_length), image)
            except Exception as exc:
                return self._after_error(job, exc)
        try:
            self._store(job, future.result())
        except Exception as exc:
            return self._after_error(job, exc)
        return "succeeded"

    def _claim(self, job_id: uuid.UUID):
        settings = self.settings
        with self.db.session() as session:
            claimed = jobs.claim_jobs(session, [job_id], settings.job_lease_seconds,
                                      settings.job_max_attempts, self.worker)  # fmt: skip
        if not claimed:
            raise JobSkipped(str(job_id))
        return claimed[0]

    def _fetch(self, job) -> np.ndarray | None:
        """The job's image ready for the encoder (299, 299, 3), or None after failing the job."""
        from model.images import decode_image

        try:
            return decode_image(self.blobs.get(job.image_key), self.settings.max_image_pixels)
        except ImageError as exc:
            self.fail(job.id, exc.code, str(exc))
        except BlobNotFound:
            self.fail(job.id, "image_missing", "the job's image is no longer in the blob store")
        return None

    def _after_error(self, job, exc: Exception) -> str:
        """Fail the job on its last attempt; otherwise requeue it and raise TemporaryFailure."""
        if job.attempts >= self.settings.job_max_attempts:
            self.fail(job.id, "caption_failed", f"{type(exc).__name__}: {exc}")
            return "failed"
        log.warning("job %s attempt %d failed (%r); requeued", job.id, job.attempts, exc)
        with self.db.session() as session:
            jobs.release_job(session, job.id)
        raise TemporaryFailure(str(job.id)) from exc

    def _run_batch(self, options: tuple[int, int], images: list[np.ndarray]) -> list[Captioned]:
        beam_size, max_length = options
        served = self.rollout.served  # one model for the whole batch, even if a swap comes
        started = time.perf_counter()
        results = served.captioner.caption_batch(np.stack(images), beam_size, max_length)
        predict_ms = (time.perf_counter() - started) * 1000
        log.info("batch of %d (beam %d) on %s in %.0f ms", len(images), beam_size,
                 served.version, predict_ms)  # fmt: skip
        return [Captioned(r, predict_ms, len(images), served.version) for r in results]

    def _store(self, job, captioned: Captioned) -> None:
        result = captioned.result
        attention = result.attention.astype(np.float16)  # (T, 64)
        buffer = io.BytesIO()
        np.save(buffer, attention, allow_pickle=False)
        key = attention_key(job.id)
        self.blobs.put(key, buffer.getvalue(), "application/x-npy")
        stored = jobs.JobResult(
            caption=result.text, tokens=result.tokens, token_log_probs=result.log_probs,
            model_version=captioned.model_version, attention_key=key,
            attention_shape=list(attention.shape), predict_ms=captioned.predict_ms,
            batch_size=captioned.batch_size,
        )  # fmt: skip
        with self.db.session() as session:
            if not jobs.finish_job(session, job, stored):
                log.warning("job %s was finished elsewhere; its result here is dropped", job.id)
        self.notifier.finished(job.id)

    def fail(self, job_id: uuid.UUID, code: str, message: str) -> None:
        """Fail a job for good, with a code the API shows."""
        log.info("job %s failed: %s: %s", job_id, code, message)
        with self.db.session() as session:
            jobs.fail_job(session, job_id, code, message)
        self.notifier.finished(job_id)

    def close(self) -> None:
        """Stop following the registry and finish queued batches."""
        self.rollout.stop()
        self.batcher.stop(timeout=60)
