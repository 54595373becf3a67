"""`Client`: jobs, batches, attention, training runs, datasets and models over HTTP."""

from __future__ import annotations

import base64
import io
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from captioner_client._config import default_api_key, default_api_url
from captioner_client._progress import ProgressBar
from captioner_client._transport import RetryPolicy, Transport
from captioner_client._types import Batch, Correction, Dataset, Job, ModelVersion, TrainingRun
from captioner_client._webhooks import verify_webhook

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
MAX_WAIT_S = 60  # the most the API holds a request for `Prefer: wait`
MAX_BATCH = 100  # images a batch
POLL_FIRST_S, POLL_MAX_S = 0.05, 1.0  # a batch's GET does not hold: poll, backing off
ARCHIVE_TYPES = {".zip": "application/zip", ".tar": "application/x-tar",
                 ".gz": "application/gzip", ".tgz": "application/gzip"}  # fmt: skip
Image = str | Path | bytes
JobRef = Job | str
DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class JobPage:
    """A page of jobs, newest first, and the cursor of the next page (None: the last)."""

    jobs: tuple[Job, ...]
    next_cursor: str | None


class Client:
    """The captioner API at `base_url`, with `api_key` (default: `CAPTIONER_API_KEY`, else the
    data folder's `api-key` file); `timeout`: seconds a request may take (5 at most to connect).
    Use it as a context manager, or call `close()`. No server there: ServerUnreachable, within
    about a second."""

    verify_webhook = staticmethod(verify_webhook)

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = (base_url or default_api_url()).rstrip("/")
        self.timeout = timeout
        self._http = Transport(
            self.base_url, api_key or default_api_key(), timeout, retry, transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Any API call: its decoded JSON (None for 204); httpx keyword arguments, plus
        `creates=True` for a POST that makes something (sent with an Idempotency-Key)."""
        response = self._http.send(method, path, **kwargs)
        return response.json() if response.content else None

    # Jobs and batches

    def submit(
        self, image: Image | None = None, *, url: str | None = None, wait: float = 0, **options: Any
    ) -> Job:
        """POST /v1/jobs: an image (a path or its bytes) or its `url=`; `wait` (≤ 60 s) asks the
        API to hold the answer until the job ends. Options: beam_size, max_length, webhook…"""
        if (image is None) == (url is None):
            raise ValueError("give an image or url= (one of them)")
        body = {"image_url": url} if url else {"image": _b64(image)}
        headers = {"Prefer": f"wait={min(wait, MAX_WAIT_S):g}"} if wait else {}
        raw = self.request(
            "POST",
            "/v1/jobs",
            json=body | options,
            headers=headers,
            creates=True,
            timeout=self.timeout + min(wait, MAX_WAIT_S),
        )
        return Job.from_json(raw)

    def submit_batch(
        self,
        images: str | Path | Iterable[Image] = (),
        *,
        urls: Iterable[str] | None = None,
        **options: Any,
    ) -> Batch:
        """POST /v1/batches: the images of a folder, a list of paths or bytes (up to 100), or
        their `urls=`."""
        if urls is not None:
            body: dict[str, Any] = {"image_urls": list(urls)}
        else:
            body = {"images": [_b64(image) for image in _image_list(images)]}
        return Batch.from_json(
            self.request("POST", "/v1/batches", json=body | options, creates=True)
        )

    def job(self, job_id: JobRef, wait: float = 0) -> Job:
        """GET /v1/jobs/{id}; `wait` (≤ 60 s) asks the API to hold the answer until it ends."""
        wait = max(0.0, min(wait, MAX_WAIT_S))
        headers = {"Prefer": f"wait={wait:.3g}"} if wait >= 0.001 else {}
        raw = self.request(
            "GET", f"/v1/jobs/{_id(job_id)}", headers=headers, timeout=self.timeout + wait
        )
        return Job.from_json(raw)

    def batch(self, batch_id: Batch | str) -> Batch:
        """GET /v1/batches/{id}."""
        batch_id = batch_id.id if isinstance(batch_id, Batch) else batch_id
        return Batch.from_json(self.request("GET", f"/v1/batches/{batch_id}"))

    def jobs(
        self, limit: int = 50, cursor: str | None = None, status: str | None = None
    ) -> JobPage:
        """GET /v1/jobs: a page of the caller's jobs, newest first (`limit` ≤ 100)."""
        params = {"limit": limit, "cursor": cursor, "status": status}
        raw = self.request("GET", "/v1/jobs", params={k: v for k, v in params.items() if v})
        return JobPage(tuple(Job.from_json(j) for j in raw["jobs"]), raw.get("next_cursor"))

    def cancel(self, job_id: JobRef) -> Job:
        """POST /v1/jobs/{id}/cancel: a queued job never runs (ApiError 409 once it started)."""
        return Job.from_json(self.request("POST", f"/v1/jobs/{_id(job_id)}/cancel"))

    def correct(self, job_id: JobRef, caption: str) -> Correction:
        """POST /v1/jobs/{id}/feedback: the caption a succeeded job's image should have had
        (training runs with `feedback` learn from it)."""
        raw = self.request("POST", f"/v1/jobs/{_id(job_id)}/feedback", json={"caption": caption})
        return Correction.from_json(raw)

    def corrections(self) -> list[Correction]:
        """GET /v1/feedback: the tenant's corrections, newest first."""
        raw = self.request("GET", "/v1/feedback")
        return [Correction.from_json(item) for item in raw["feedback"]]

    def wait(self, job: JobRef, timeout: float = 300, progress: bool = False) -> Job:
        """The job once it has ended; TimeoutError after `timeout` seconds."""
        return self.wait_all([job], timeout, progress)[0]

    def wait_all(
        self,
        jobs: Iterable[JobRef] | Batch,
        timeout: float = 600,
        progress: bool | Callable[[int, int], None] = True,
    ) -> list[Job]:
        """Every job once ended, in order; `progress`: a bar on stderr, or a callback given
        (done, total) after each poll. Each poll reads every job still running; a Batch is
        read with one request a poll (the cheaper way to follow many jobs)."""
        jobs = jobs if isinstance(jobs, Batch) else list(jobs)
        report, close = _reporter(progress, jobs.size if isinstance(jobs, Batch) else len(jobs))
        try:
            if isinstance(jobs, Batch):
                return list(self._poll_batch(jobs.id, timeout, report).jobs)
            return self._poll_jobs([_id(job) for job in jobs], timeout, report)
        finally:
            close()

    def _poll_jobs(
        self, ids: list[str], timeout: float, report: Callable[[int], None]
    ) -> list[Job]:
        """Each job in turn, held by the API (`Prefer: wait`) until it ends: the others end
        meanwhile, so most of their reads answer at once."""
        deadline, ended = time.monotonic() + timeout, []
        for job_id in ids:
            while not (job := self.job(job_id, wait=deadline - time.monotonic())).done:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{len(ids)} jobs still running after {timeout:g} s")
            ended.append(job)
            report(len(ended))
        return ended

    def _poll_batch(self, batch_id: str, timeout: float, report: Callable[[int], None]) -> Batch:
        for _ in _polls(timeout, f"batch {batch_id}"):
            batch = self.batch(batch_id)
            report(sum(job.done for job in batch.jobs))
            if batch.done:
                return batch
        raise AssertionError("unreachable")

    def attention(self, job: JobRef) -> np.ndarray:
        """A succeeded job's attention, (words, rows, columns) float16: a grid per word."""
        data = self._http.send("GET", f"/v1/jobs/{_id(job)}/attention").content
        weights = np.load(io.BytesIO(data), allow_pickle=False)  # (T, 64)
        side = math.isqrt(weights.shape[-1])
        return weights.reshape(len(weights), side, side)  # (T, 8, 8)

    def attention_png(self, job: JobRef) -> bytes:
        """A succeeded job's heat maps, one per word over the image, as a PNG."""
        return self._http.send("GET", f"/v1/jobs/{_id(job)}/attention.png").content

    # Training runs, datasets, models

    def start_run(
        self,
        dataset: dict | Dataset | str | None = None,
        *,
        shapes: int | None = None,
        hyperparameters: dict | None = None,
        **fields: Any,
    ) -> TrainingRun:
        """POST /v1/training-runs on an uploaded dataset (a Dataset, its id, or the API's dict)
        or `shapes=N` synthetic images; fields: base_version, promotion, webhook…"""
        body = {"dataset": _dataset_spec(dataset, shapes), **fields}
        if hyperparameters:
            body["hyperparameters"] = hyperparameters
        return TrainingRun.from_json(
            self.request("POST", "/v1/training-runs", json=body, creates=True)
        )

    def run(self, run_id: TrainingRun | str) -> TrainingRun:
        """GET /v1/training-runs/{id}."""
        return TrainingRun.from_json(self.request("GET", f"/v1/training-runs/{_id(run_id)}"))

    def runs(self) -> list[TrainingRun]:
        """GET /v1/training-runs: the newest runs first (up to 100)."""
        raw = self.request("GET", "/v1/training-runs")
        return [TrainingRun.from_json(run) for run in raw["training_runs"]]

    def watch_run(
        self,
        run_id: TrainingRun | str,
        on_update: Callable[[TrainingRun], Any],
        timeout: float = 24 * 3600,
        poll_s: float = 2.0,
    ) -> TrainingRun:
        """Follow a run until it ends, calling `on_update` whenever its state changed."""
        seen = None
        for _ in _polls(timeout, f"training run {_id(run_id)}", poll_s):
            run = self.run(run_id)
            if run.raw != seen:
                seen = run.raw
                on_update(run)
            if run.done:
                return run
        raise AssertionError("unreachable")

    def cancel_run(self, run_id: TrainingRun | str) -> TrainingRun:
        """POST /v1/training-runs/{id}/cancel: at once if queued, at the next step if running."""
        raw = self.request("POST", f"/v1/training-runs/{_id(run_id)}/cancel")
        return TrainingRun.from_json(raw)

    def upload_dataset(self, archive: str | Path | bytes, name: str | None = None) -> Dataset:
        """POST /v1/datasets: a COCO-format zip or tar (gzip too) archive, a path or its bytes."""
        path = None if isinstance(archive, bytes) else Path(archive)
        data = archive if path is None else path.read_bytes()
        kind = ARCHIVE_TYPES.get(path.suffix.lower(), "application/octet-stream") if path else None
        headers = {"Content-Type": kind or "application/octet-stream"}
        params = {"name": name or (path.name if path else "dataset")}
        raw = self.request(
            "POST", "/v1/datasets", content=data, headers=headers, params=params, creates=True
        )
        return Dataset.from_json(raw)

    def datasets(self) -> list[Dataset]:
        """GET /v1/datasets: the caller's datasets, newest first."""
        return [Dataset.from_json(d) for d in self.request("GET", "/v1/datasets")["datasets"]]

    def models(self) -> list[ModelVersion]:
        """GET /v1/models: every version, newest first (`.active` marks the one served)."""
        return [ModelVersion.from_json(m) for m in self.request("GET", "/v1/models")["models"]]

    def promote(self, version: ModelVersion | str) -> ModelVersion:
        """POST /v1/models/{version}/promote (an admin key): workers swap to it within seconds."""
        name = version.version if isinstance(version, ModelVersion) else version
        return ModelVersion.from_json(self.request("POST", f"/v1/models/{name}/promote"))


def _id(thing: Job | TrainingRun | str) -> str:
    return thing if isinstance(thing, str) else thing.id


def _b64(image: Image) -> str:
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    return base64.b64encode(data).decode()


def _image_list(images: str | Path | Iterable[Image]) -> list[Image]:
    """A folder's image files (by name), or the list as given."""
    if isinstance(images, str | Path):
        folder = Path(images)
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return list(images)


def _dataset_spec(dataset: dict | Dataset | str | None, shapes: int | None) -> dict:
    if (dataset is None) == (shapes is None):
        raise ValueError("give a dataset or shapes=N (one of them)")
    if shapes is not None:
        return {"type": "shapes", "size": shapes}
    if isinstance(dataset, dict):
        return dataset
    return {"type": "upload", "id": dataset.id if isinstance(dataset, Dataset) else dataset}


def _polls(timeout: float, what: str, most_s: float = POLL_MAX_S) -> Iterator[None]:
    """Yields before each poll: at once, then after pauses doubling up to `most_s`; once
    `timeout` has passed, TimeoutError naming `what`."""
    deadline, pause_s = time.monotonic() + timeout, POLL_FIRST_S
    while True:
        yield
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{what} still running after {timeout:g} s")
        time.sleep(min(pause_s, left))
        pause_s = min(pause_s * 2, most_s)


def _reporter(
    progress: bool | Callable[[int, int], None], total: int
) -> tuple[Callable[[int], None], Callable[[], None]]:
    """(report(done), close()) for a bar on stderr, a callback, or nothing."""
    if callable(progress):
        return (lambda done: progress(done, total)), (lambda: None)
    if not progress:
        return (lambda done: None), (lambda: None)
    bar = ProgressBar(total)
    return bar.update, bar.close
