"""Throughput with 1, 2, 4 inference worker processes behind one API, on one machine.

Prints one JSON object. Run from the repository root (Postgres and Redis running):
`python benchmarks/bench_scaleout.py [--workers 1,2,4] [--jobs 2000] [--standin-ms 50]`, or
`python benchmarks/bench_scaleout.py --real-model [--workers 1,2] [--jobs 200]`.

The production stack as bench_control_plane.py starts it (its functions are imported): Postgres,
Redis, a moto S3 server, the API as the Dockerfile runs it (its CMD and gunicorn config), and N
processes `python -m captioner worker --queue inference --name scaleout-I`, fresh for each N.
4 client threads post `--jobs` images as batches of 100 (64 shapes PNGs, 299x299); `jobs_per_s`
is jobs over the time from the first post to the last `finished_at` in Postgres (see
bench_control_plane.rates). Per N: `speedup` = jobs_per_s / jobs_per_s at N=1 and
`efficiency` = speedup / N, plus the load average after the run; the machine's cpu count and
load before and after everything. Clients wait while more than `--backlog` jobs are unfinished.
`steady`: bench_control_plane's steady window (20% to 80% of the jobs done): jobs/s and each
part's CPU and requests per job. `shared_servers`: for Postgres (backends that exited included),
Redis, the S3 endpoint and the API, the CPU per job in that window and the jobs per second one
core of each could serve at that cost: the inputs of the capacity model (docs/capacity.md).

Stand-in mode (default): each worker's model costs `--standin-ms` per batch and sleeps for it
(CAPTIONER_BENCH_STANDIN_MODEL_MS), as a GPU's forward pass would: it takes none of this
machine's CPU. With one worker the "GPU" is the bottleneck; N workers are N GPUs, so the ideal
is N times the jobs/s. The rest of a job is CPU work on this machine: the API's parsing and
inserts, Postgres, Redis, moto, and each worker's Python (claim, fetch, PNG decode, store).
That is a few ms per job (bench_control_plane.py measures it), about 2 cores' worth at a few
hundred jobs/s. Once N "GPUs" can take more than that, the control plane saturates the 2 cores,
the sleeps overlap with CPU queueing rather than with each other, and efficiency falls: the
limit is then this machine's CPU, not the model. On real hardware each worker would have its
own host cores; on one 2-core box the figures show where the shared control plane tops out.

`--real-model`: the real model (InceptionV3 encoder with the offline `seed:0` weights and the
tiny random decoder of bench_control_plane.tiny_bundle) on the CPU, 1 vs 2 worker processes.
CPU TensorFlow already spreads one process's forward pass over every core, so a second process
only competes for the same cores (and memory bandwidth, and thread pools oversubscribed 2x):
`ratio_2_over_1` near or below 1 is why one worker process per machine is the CPU setting.
`images_per_s` is jobs_per_s (one image per job). The load average matters: use a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_control_plane import (  # noqa: E402
    SETTING_MARK,
    UNBOUNDED,
    Inputs,
    Progress,
    Running,
    api_key,
    child_env,
    load,
    machine,
    make_inputs,
    moto_process,
    post,
    rates,
    start,
    wait_api,
    wait_done,
)
from benchmarks.bench_control_plane import start_api as start_production_api  # noqa: E402
from captioner.processes import stop, wait_ready  # noqa: E402
from captioner_client import Client  # noqa: E402
from harness.stack import CLIENT_TIMEOUT_S, services  # noqa: E402

FIRST = "worker"  # the first worker's process name: bench_control_plane's helpers watch it
WARM_IMAGES = 8  # per client thread, before the measured run


def parse_args() -> argparse.Namespace:
    """The command line (and the settings bench_control_plane's helpers read, at their values
    for batches of multipart PNGs, no profile)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default=None, help="worker counts, e.g. 1,2,4")
    parser.add_argument("--jobs", type=int, default=None, help="images per run (2000; real: 200)")
    parser.add_argument("--standin-ms", type=float, default=50.0, help="stand-in ms per batch")
    parser.add_argument("--real-model", action="store_true", help="the real model on the CPU")
    parser.add_argument("--threads", type=int, default=4, help="client threads posting")
    parser.add_argument("--batch-images", type=int, default=100, help="images per POST")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for one run")
    parser.add_argument(
        "--backlog", type=int, default=512, help="unfinished jobs at most before a post waits"
    )
    parser.add_argument("--singles", action="store_true", help="one image per POST /v1/jobs")
    parser.set_defaults(  # what bench_control_plane's functions read, as its defaults
        upload="multipart",
        no_profile=True,
        profile_rate=0,
        batch=None,
        submit_only=False,
        inline_bytes=None,
    )
    args = parser.parse_args()
    args.workers = args.workers or ("1,2" if args.real_model else "1,2,4")
    args.jobs = args.jobs or (200 if args.real_model else 2000)
    return args


def main() -> None:
    """Run the stack at each worker count; print the rates, speed-ups and the machine."""
    args = parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        inputs = make_inputs(Path(tmp), args)
        runs = {n: run_once(inputs, n, Path(tmp) / f"n{n}") for n in counts}
    result = scaling(runs, args) if not args.real_model else real_model(runs, args)
    print(json.dumps(result | machine(load_before)))


def scaling(runs: dict[int, dict], args: argparse.Namespace) -> dict:
    """Stand-in mode: jobs/s, speed-up over the first count and efficiency, per worker count."""
    base_n = min(runs)
    base = runs[base_n]["jobs_per_s"]
    for n, run in runs.items():
        run["speedup"] = round(run["jobs_per_s"] / base, 3)
        run["efficiency"] = round(run["speedup"] * base_n / n, 3)
    return {
        "mode": "standin",
        "standin_ms_per_batch": args.standin_ms,
        "jobs": args.jobs,
        "batch_images": 1 if args.singles else args.batch_images,
        "threads": args.threads,
        "by_workers": runs,
    }


# The servers every worker shares, and the one process each part runs in here; Postgres'
# figure includes its backends (also those that exited).
SHARED = {"postgres": "postgres_cpu_ms_per_job", "redis": "redis_cpu_ms_per_job",
          "s3 (moto)": "moto_cpu_ms_per_job", "api": "api_cpu_ms_per_job"}  # fmt: skip


def capacity(steady: dict) -> dict:
    """For each shared server: its CPU per job in the steady window, and the jobs per second
    one core of it could serve at that cost (what it can feed before it saturates)."""
    if "note" in steady:
        return {}
    return {
        name: {
            "cpu_ms_per_job": steady[key],
            "jobs_per_s_per_core": round(1000 / steady[key]) if steady[key] > 0 else None,
        }
        for name, key in SHARED.items()
    }


def real_model(runs: dict[int, dict], args: argparse.Namespace) -> dict:
    """Real-model mode: images/s per worker count and the ratio of 2 processes over 1."""
    for run in runs.values():
        run["images_per_s"] = run["jobs_per_s"]
    ratio = None
    if 1 in runs and 2 in runs:
        ratio = round(runs[2]["images_per_s"] / runs[1]["images_per_s"], 3)
    return {
        "mode": "real-model",
        "jobs": args.jobs,
        "batch_images": args.batch_images,
        "by_workers": runs,
        "ratio_2_over_1": ratio,
    }


def run_once(inputs: Inputs, workers: int, folder: Path) -> dict:
    """A fresh stack with `workers` inference processes: warm up, then one measured run."""
    folder.mkdir(parents=True)
    with scaled_stack(inputs, workers, folder) as run, Progress(run.settings.database_url) as db:
        warm_up(run, inputs, db)
        db.watch_backends(fresh=True)  # `load` follows Postgres backends as it polls
        started_at = datetime.datetime.now(datetime.UTC)
        batch_ids, submit_s, followed = load(run, inputs, db)
        figures = rates(db.jobs(batch_ids), started_at, inputs.args.jobs)
        shares = jobs_by_worker(db, batch_ids)
    return figures | {
        "steady": followed["steady"],
        "shared_servers": capacity(followed["steady"]),
        "workers": workers,
        "submit_s": round(submit_s, 2),
        "jobs_by_worker": shares,
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }


def jobs_by_worker(progress: Progress, batch_ids: list[str]) -> dict[str, int]:
    """How many of the measured jobs each worker process ran (the `worker` that claimed it);
    `batch_ids` are job ids with --singles."""
    sql = (
        "SELECT worker, count(*) FROM jobs WHERE batch_id = ANY(%s::uuid[]) "
        "OR id = ANY(%s::uuid[]) GROUP BY worker ORDER BY worker"
    )
    return {str(w): count for w, count in progress.query(sql, (batch_ids, batch_ids))}


@contextmanager
def scaled_stack(inputs: Inputs, workers: int, folder: Path) -> Iterator[Running]:
    """Postgres, Redis and moto (harness.stack), `workers` inference workers, the API."""
    overrides = {
        "model_bundle": inputs.bundle,
        "max_queued_jobs": UNBOUNDED,
        "max_queued_per_tenant": UNBOUNDED,
    }
    with services(folder / "data", **overrides) as settings:
        run = Running(ROOT, "setting", settings, folder)
        run.moto_pid, run.moto_log = moto_process(settings.s3_endpoint_url)
        try:
            start_workers(run, inputs, workers)
            start_api(run, inputs)
            yield run
        finally:
            stop(list(run.processes.values()))


def start_workers(run: Running, inputs: Inputs, count: int) -> None:
    """`count` inference workers, each its own node name; block until all consume."""
    standin = not inputs.args.real_model
    names = [FIRST, *(f"worker-{i}" for i in range(2, count + 1))]
    for i, name in enumerate(names, 1):
        command = [
            sys.executable,
            "-m",
            "captioner",
            "worker",
            "--queue",
            "inference",
            "--name",
            f"scaleout-{i}@bench",
        ]
        run.processes[name] = start(run, name, command, child_env(run, inputs, standin))
    for name in names:
        wait_ready(run.processes[name], run.log(name))


def start_api(run: Running, inputs: Inputs) -> None:
    """The API as the Dockerfile runs it, on a free loopback port."""
    run.client = Client(start_production_api(run, inputs), api_key(run), timeout=CLIENT_TIMEOUT_S)
    wait_api(run)


def warm_up(run: Running, inputs: Inputs, progress: Progress) -> None:
    """One small batch per client thread, all finished; check every worker's model."""
    threads, count = inputs.args.threads, 1 if inputs.args.singles else WARM_IMAGES
    for _ in range(threads):
        post(run, inputs, inputs.pngs[:count])
    wait_done(run, progress, count * threads, 600)
    workers = [name for name in run.processes if name != "api"]
    for name in workers:
        uses_standin = SETTING_MARK in run.log(name).read_text(errors="replace")
        if uses_standin == inputs.args.real_model:
            raise RuntimeError(
                f"{name}: stand-in {uses_standin}, real model asked: {inputs.args.real_model}"
            )
    progress.warm = progress.done()


if __name__ == "__main__":
    main()
