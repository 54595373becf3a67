"""The whole pipeline against the bare model, in one run on one machine.

Prints one JSON object. Run from the repository root (Postgres and Redis running):
`python benchmarks/bench_pipeline.py [--jobs 256] [--batch 32]`; `--auth-only` measures only
what authentication adds to a request (seconds, no model).

- `raw_images_per_s`: `Captioner.caption_batch` on pre-decoded images at the worker's batch
  size, in this process, measured before and after the pipeline runs (the mean is reported).
- `pipeline_jobs_per_s`: jobs submitted over HTTP by 8 client threads as fast as the API takes
  them, through Redis to one worker process, to `succeeded` in Postgres with attention in S3
  (moto). The rate is taken over the middle 80% of completions, leaving out ramp-up and drain.
- `closed_loop_jobs_per_s`, `closed_loop_ratio` (over `raw_images_per_s`): `--clients` (16)
  clients, each sending one image and waiting for its caption (`Prefer: wait`) before the
  next, as callers of a one-image endpoint do; the rate over the middle 80% of completions.
- The API runs as production runs it (the Dockerfile's gunicorn command), in its own processes.
- `p50_ms`, `p95_ms`: one job at a time (low load), from the HTTP request to the answer that
  it succeeded (`Prefer: wait`), measured by the client.
- `single_image_ms`: `caption_batch` on one pre-decoded image, in this process.
- `auth_*`: what the API key adds to a request (`--auth-requests` of each, interleaved, on the
  stack's Postgres and Redis; its rate limit counts two windows, as the default does, and never
  refuses): `auth_identify_*` is `api.auth.identify` alone (the key's hash and one SELECT);
  `auth_hooks_*` the before-request hooks of GET /v1/models with the key (identify, then the
  rate limit's two counts in Redis) and of /healthz (no key); `auth_http_*` GET
  /v1/jobs/<missing id> (key, limit, a lookup by id: 404) and GET /healthz over HTTP to the
  threaded server, as the client measures them. p50 and p95 in ms; `*_added_p50_ms`: the
  difference.
The decoder has the full-size vocabulary with random weights and `<end>` suppressed, so every
caption runs all 20 steps: the slowest case for decoding, as in bench_model.py.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from api import create_app  # noqa: E402
from api.auth import identify  # noqa: E402
from benchmarks.bench_model import full_size_bundle  # noqa: E402
from captioner.processes import api_server, start_worker, stop, wait_ready  # noqa: E402
from captioner_client import ApiError, Client, Job  # noqa: E402
from core.settings import Settings  # noqa: E402
from harness.stack import CLIENT_TIMEOUT_S, admin_key, production_api, services  # noqa: E402
from model.bundle import load_bundle, save_bundle  # noqa: E402
from model.encoder import Encoder  # noqa: E402
from model.images import decode_image  # noqa: E402
from model.inference import Captioner  # noqa: E402
from model.shapes import write_shapes_dataset  # noqa: E402
from store.db import Database  # noqa: E402

WORKER = "bench@stack"


def raw_images_per_s(captioner: Captioner, images: np.ndarray, batch: int, reps: int) -> float:
    """Median images/s of caption_batch at `batch` (after one warm-up call)."""
    chunk = images[:batch]
    captioner.caption_batch(chunk)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        captioner.caption_batch(chunk)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def single_image_ms(captioner: Captioner, images: np.ndarray, reps: int) -> float:
    """Median milliseconds to caption one pre-decoded image."""
    captioner.caption_batch(images[:1])
    times = []
    for i in range(reps):
        start = time.perf_counter()
        captioner.caption_batch(images[i % len(images)][None])
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def submit(client: Client, image: bytes, wait: float = 0) -> Job:
    """POST /v1/jobs (base64 JSON), `Prefer: wait` if asked. Not `client.submit`: that sends
    an Idempotency-Key, whose own transactions would count in every job's figures."""
    headers = {"Prefer": f"wait={wait:g}"} if wait else {}
    body = {"image": base64.b64encode(image).decode()}
    timeout = client.timeout + wait
    return Job.from_json(
        client.request("POST", "/v1/jobs", json=body, headers=headers, timeout=timeout)
    )


def low_load_latency(client: Client, pngs: list[bytes], n: int) -> dict:
    """Percentiles of `n` jobs sent one at a time, each waited for, and where the time went."""
    submit(client, pngs[0], wait=60)  # the first request opens connections
    latencies, jobs = [], []
    for i in range(n):
        start = time.perf_counter()
        job = submit(client, pngs[i % len(pngs)], wait=60)
        latencies.append((time.perf_counter() - start) * 1000)
        if job.status != "succeeded":
            raise RuntimeError(f"job ended {job.status}: {job.error_code} {job.error_message}")
        jobs.append(job.raw["timings"])
    # Server-side parts (medians): row created → claimed, the forward pass, created → finished.
    parts = {
        key: statistics.median(t[key] for t in jobs)
        for key in ("queue_ms", "predict_ms", "total_ms")
    }
    return {
        "p50_ms": statistics.median(latencies),
        "p95_ms": float(np.percentile(latencies, 95)),
        **{f"low_load_{key}": value for key, value in parts.items()},
    }


def saturation(client: Client, pngs: list[bytes], n: int) -> dict:
    """Submit `n` jobs from 8 threads at once; the sustained completion rate and batch sizes."""
    started = time.perf_counter()
    images = [pngs[i % len(pngs)] for i in range(n)]
    with ThreadPoolExecutor(8) as pool:
        ids = [job.id for job in pool.map(lambda image: submit(client, image), images)]
    submitted_s = time.perf_counter() - started
    submitted_at = datetime.datetime.now(datetime.UTC)
    # Rates come from the server's finished_at, so checking on the jobs can be slow and light:
    # one request at a time, held by the API until its job ends.
    jobs = [job.raw for job in client.wait_all(ids, timeout=1200, progress=False)]
    if any(job["status"] != "succeeded" for job in jobs):
        raise RuntimeError("some jobs did not succeed")
    finished = sorted(datetime.datetime.fromisoformat(j["timings"]["finished_at"]) for j in jobs)
    low, high = n // 10, n - 1 - n // 10
    window = (finished[high] - finished[low]).total_seconds()
    sizes = [job["timings"]["batch_size"] for job in jobs]
    after = [t for t in finished if t > submitted_at]  # no HTTP submissions competing for CPU
    drain = (len(after) - 1) / (after[-1] - after[0]).total_seconds() if len(after) > 1 else None
    return {
        "pipeline_jobs_per_s": (high - low) / window,
        "drain_jobs_per_s": drain,
        "overall_jobs_per_s": n / (time.perf_counter() - started),
        "submit_s": submitted_s,
        "mean_batch_size": statistics.mean(sizes),
        "max_batch_size": max(sizes),
    }


def cpu_seconds(worker_pid: int) -> dict[str, float]:
    """CPU seconds used so far by each part of the pipeline on this machine (from /proc)."""
    roles = {part: 0.0 for part in ("worker", "api", "client", "s3_moto", "postgres", "redis")}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid = int(stat.parent.name)
            cmdline = (stat.parent / "cmdline").read_bytes().decode(errors="replace")
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            continue  # the process ended meanwhile
        role = (
            "worker"
            if pid == worker_pid
            else "client"
            if pid == os.getpid()
            else "api"
            if "gunicorn" in cmdline
            else "s3_moto"
            if "moto_server" in cmdline
            else "postgres"
            if "postgres" in cmdline
            else "redis"
            if "redis-server" in cmdline
            else None
        )
        if role:
            roles[role] += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return roles


def interleaved(calls: dict, n: int) -> dict[str, float]:
    """`NAME_p50_ms` and `NAME_p95_ms` of each call, the calls taking turns `n` times (after
    one warm-up round), so that drift on a shared machine hits them alike."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(n):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1000)
    return {
        f"{name}_{q}_ms": float(np.percentile(ms, p))
        for name, ms in times.items()
        for q, p in (("p50", 50), ("p95", 95))
    }


def hooks(app, path: str, headers: dict[str, str]):
    """A call running the app's before-request hooks (auth, rate limit, idempotency) on `path`."""

    def run() -> None:
        with app.test_request_context(path, headers=headers):
            if app.preprocess_request() is not None:  # a hook answered instead of the view
                raise RuntimeError(f"the hooks refused {path}")

    return run


def missing_job(client: Client):
    """A call of GET /v1/jobs/<an id that does not exist>: the key checked, then a 404."""

    def run() -> None:
        try:
            client.request("GET", f"/v1/jobs/{uuid.uuid4()}")
        except ApiError as exc:
            if exc.status != 404:
                raise

    return run


def auth_overhead(settings: Settings, n: int) -> dict:
    """What the API key adds to a request: identify alone, the hooks, and over HTTP."""
    app = create_app(settings)
    key = admin_key(app.extensions["captioner"].db, "bench")
    header = {"Authorization": f"Bearer {key}"}
    with app.app_context():
        figures = interleaved({"auth_identify": lambda: identify(header["Authorization"])}, n)
    figures |= interleaved(
        {
            "auth_hooks_with_key": hooks(app, "/v1/models", header),
            "auth_hooks_public": hooks(app, "/healthz", {}),
        },
        n,
    )
    app.extensions["captioner"].db.dispose()
    with api_server(settings) as url, Client(url, key, timeout=CLIENT_TIMEOUT_S) as client:
        figures |= interleaved(
            {
                "auth_http_with_key": missing_job(client),
                "auth_http_public": lambda: client.request("GET", "/healthz"),
            },
            n,
        )
    for name in ("auth_hooks", "auth_http"):
        added = figures[f"{name}_with_key_p50_ms"] - figures[f"{name}_public_p50_ms"]
        figures[f"{name}_added_p50_ms"] = added
    return figures


def make_inputs(workdir: Path, encoder: Encoder) -> tuple[Path, list[bytes], np.ndarray]:
    """A saved full-size random bundle, 64 shapes PNGs, and the same images decoded."""
    bundle = save_bundle(full_size_bundle(encoder), workdir / "bundle")
    write_shapes_dataset(workdir / "shapes", 64, seed=3, val_fraction=0.0)
    paths = sorted((workdir / "shapes" / "images" / "train").glob("*.png"))
    pngs = [p.read_bytes() for p in paths]
    return bundle, pngs, np.stack([decode_image(data) for data in pngs])


def run_pipeline(workdir: Path, bundle: Path, pngs: list[bytes], args) -> dict:
    """Postgres, Redis, moto S3, one worker process and the API as production runs it:
    latency, then saturation, then closed-loop clients."""
    options = {
        "model_bundle": bundle,
        "batch_max_size": args.batch,
        "batch_max_wait_ms": args.max_wait_ms,
    }
    with services(workdir / "service", **options) as settings:
        log = workdir / "worker.log"
        worker = start_worker(settings, log, WORKER)
        try:
            wait_ready(worker, log)
            database = Database(settings.database_url)
            key = admin_key(database)
            database.dispose()
            with (
                production_api(settings, workdir / "api.log") as api,
                Client(api.url, key, timeout=CLIENT_TIMEOUT_S) as client,
            ):
                return measure_pipeline(client, worker.pid, settings, pngs, args)
        finally:
            stop([worker])


def measure_pipeline(client: Client, worker_pid: int, settings, pngs: list[bytes], args) -> dict:
    """The auth figures, low-load latency, saturation (with each part's share of the CPU), then
    `--clients` closed-loop clients."""
    auth = auth_overhead(settings, args.auth_requests)
    latency = low_load_latency(client, pngs, args.latency_jobs)
    before = cpu_seconds(worker_pid)
    figures = saturation(client, pngs, args.jobs)
    after = cpu_seconds(worker_pid)
    used = {role: after[role] - before[role] for role in after}
    total = sum(used.values())
    shares = {f"cpu_share_{role}": seconds / total for role, seconds in used.items()}
    loop = closed_loop(client, pngs, args.clients, args.closed_loop_jobs)
    return figures | latency | shares | auth | loop


def closed_loop(client: Client, pngs: list[bytes], clients: int, n: int) -> dict:
    """`clients` threads, each sending one image and waiting for its caption (`Prefer: wait`)
    before sending the next, until `n` jobs are done: the completion rate over the middle 80%
    and the batches the worker made."""
    numbers = itertools.count()

    def one_client(_) -> list[dict]:
        done = []
        while (i := next(numbers)) < n:
            job = submit(client, pngs[i % len(pngs)], wait=60)
            if job.status != "succeeded":
                raise RuntimeError(f"job ended {job.status}: {job.error_code}")
            done.append(job.raw["timings"])
        return done

    with ThreadPoolExecutor(clients) as pool:
        timings = [t for part in pool.map(one_client, range(clients)) for t in part]
    finished = sorted(datetime.datetime.fromisoformat(t["finished_at"]) for t in timings)
    low, high = n // 10, n - 1 - n // 10
    window = (finished[high] - finished[low]).total_seconds()
    return {
        "closed_loop_jobs_per_s": (high - low) / window if window > 0 else None,
        "closed_loop_mean_batch_size": statistics.mean(t["batch_size"] for t in timings),
    }


def auth_only(n: int) -> dict:
    """The `auth_*` figures alone, on Postgres, Redis and moto S3 (no worker, no model)."""
    with tempfile.TemporaryDirectory() as tmp, services(Path(tmp)) as settings:
        figures = auth_overhead(settings, n)
    return {key: round(value, 3) for key, value in figures.items()} | {
        "auth_requests": n,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": datetime.date.today().isoformat(),
    }


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=256, help="jobs in the saturation run")
    parser.add_argument("--latency-jobs", type=int, default=30, help="jobs sent one at a time")
    parser.add_argument("--batch", type=int, default=32, help="the worker's BATCH_MAX_SIZE")
    parser.add_argument("--max-wait-ms", type=int, default=50, help="BATCH_MAX_WAIT_MS")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--clients", type=int, default=16, help="closed-loop clients")
    parser.add_argument(
        "--closed-loop-jobs", type=int, default=256, help="jobs the closed-loop clients send"
    )
    parser.add_argument(
        "--auth-requests", type=int, default=500, help="requests of each kind in the auth figures"
    )
    parser.add_argument(
        "--auth-only",
        action="store_true",
        help="only what authentication adds to a request (no model)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.auth_only:
        print(json.dumps(auth_only(args.auth_requests)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        encoder = Encoder("seed:0")
        bundle, pngs, images = make_inputs(workdir, encoder)
        captioner = Captioner(load_bundle(bundle), encoder)
        raw_before = raw_images_per_s(captioner, images, args.batch, args.reps)
        single = single_image_ms(captioner, images, args.reps * 3)
        figures = run_pipeline(workdir, bundle, pngs, args)
        raw_after = raw_images_per_s(captioner, images, args.batch, args.reps)
    raw = (raw_before + raw_after) / 2
    result = {
        "pipeline_jobs_per_s": round(figures.pop("pipeline_jobs_per_s"), 2),
        "raw_images_per_s": round(raw, 2),
        "ratio": None,
        "p50_ms": round(figures.pop("p50_ms"), 1),
        "p95_ms": round(figures.pop("p95_ms"), 1),
        "single_image_ms": round(single, 1),
        "raw_before": round(raw_before, 2),
        "raw_after": round(raw_after, 2),
        **{key: round(value, 2) for key, value in figures.items()},
        "batch": args.batch,
        "jobs": args.jobs,
        "latency_jobs": args.latency_jobs,
        "clients": args.clients,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": datetime.date.today().isoformat(),
    }
    result["ratio"] = round(result["pipeline_jobs_per_s"] / raw, 3)
    closed = result["closed_loop_jobs_per_s"]
    result["closed_loop_ratio"] = round(closed / raw, 3) if closed else None
    result["p50_minus_single_ms"] = round(result["p50_ms"] - result["single_image_ms"], 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
