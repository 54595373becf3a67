"""The control plane's cost per job, with the model replaced by a stand-in of fixed cost.

Prints one JSON object. Run from the repository root (Postgres and Redis running):
`python benchmarks/bench_control_plane.py [--jobs 2000] [--standin-ms 5] [--both | --singles]
[--source DIR] [--compare OLD_DIR --rounds 1]`.

The production stack on this machine: Postgres, Redis, a moto S3 server, the API in its own
process as the Dockerfile runs it (its CMD: gunicorn with captioner/gunicorn_conf.py, 4 threaded
workers) and one inference worker process
(`python -m captioner worker --queue inference`), beat with `--beat`. The worker's forward pass
costs `--standin-ms` per batch (a fast GPU): the setting CAPTIONER_BENCH_STANDIN_MODEL_MS where
the code has it, else a `sitecustomize.py` that patches `Captioner.caption_batch` (old code).
Either way the real model's warm-up is skipped: it never runs.

- `steady`: the figures that matter, over a window from 20% to 80% of the jobs done (past the
  warm-up, before the tail): `jobs_per_s` and every part's CPU and requests per job. Client
  threads post batches of 100 images (64 shapes PNGs), each waiting while more than
  `--backlog` jobs are unfinished, so posting and draining overlap as in a service that keeps
  up with its callers. `jobs_per_s` outside `steady`: from the first post to the last
  `finished_at` (a burst); `jobs_per_s_mid80` over the middle 80% of completions. Progress is
  read from Postgres (one COUNT every 0.2 s), not through the API.
- `*_cpu_ms_per_job`: CPU (utime + stime from /proc) of each part over the run, per job: the
  API (gunicorn master and workers), the worker (and any children), moto, Postgres (the stack
  database's backends, followed at every poll as connections come and go, and the server's own
  processes; `postgres_all`: every postgres process on the machine, ended backends included),
  Redis, this client. `decode_cpu_ms_per_image`: the decode stage of the worker's own profile
  (`decode_measured: worker`); without a profile, the source's `model.images.decode_image` on
  the same images alone in a child process (`alone`). `own_cpu_ms_per_job_excl_decode` = api +
  worker - decode, over the steady window.
- `s3_requests_per_job` (moto's request log), `pg_xacts_per_job` and `pg_sessions_per_job`
  (pg_stat_database, less this script's polls), `redis_commands_per_job` (INFO stats: every
  Redis database on the server, so someone else's load counts: see `redis_other_clients`).
- `worker_stages_ms_per_job`: py-spy samples of the worker (CPU only, 200 Hz) from 10% to 90%
  of the jobs done, each sample given to a stage by the innermost frame matching STAGES below
  (else FALLBACK_STAGES, else `other`); the shares are scaled to the worker's CPU per job over
  that span (`total`), as py-spy falls behind on a busy machine (`profile_coverage`: samples /
  rate / CPU seconds). py-spy runs niced, yet takes CPU the stack needs on a small machine:
  `--no-profile` gives the cleanest rates. Needs py-spy in the venv; skipped with a note if not.

`post_ms_p50`, `post_ms_p99`: how long a post took to be answered (from the client).

`--singles` posts one image at a time to /v1/jobs instead (`--threads 32`: submits at
concurrency 32); `posts_per_s` is the submission rate either way. `--submit-only` stops the
worker after the warm-up: the submissions alone, every figure per job submitted (the jobs stay
queued; `--singles --threads 32 --submit-only` is POST /v1/jobs at 32 clients). `--both` runs
the batch path and then single submissions from `--single-threads` clients (16), each on a
fresh stack, and adds `singles_over_batches`, the ratio of their steady rates.

`--source DIR` runs the API and the worker from another checkout (DIR first on PYTHONPATH, cwd
DIR, DIR's migrations); `--compare OLD_DIR` alternates OLD_DIR and the source for `--rounds`
and adds the ratios new/old. The machine's load is reported: the figures need a quiet machine.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg2  # noqa: E402
import redis  # noqa: E402

from captioner.processes import stop, tail, wait_ready  # noqa: E402
from captioner_client import Client  # noqa: E402
from core.settings import Settings, to_env  # noqa: E402
from harness.http import free_port, wait_for_http  # noqa: E402
from harness.stack import (  # noqa: E402
    CLIENT_TIMEOUT_S,
    POSTGRES_URL,
    REDIS_URL,
    admin_key,
    fresh_postgres,
    moto_s3_server,
    production_command,
    production_settings,
    redis_database,
)
from store.db import Database  # noqa: E402
from store.tables import TERMINAL  # noqa: E402

# Worker stages: (stage, file pattern, function pattern), searched (re.search) in py-spy's frames
# `function (path:line)`, functions as qualified names (`Inference._claim`). Frames are tried
# from the innermost out, each against every rule in order; the first match decides. A commit
# happens where the session opened, so the worker's own methods name the stage of their commit.
INFERENCE = r"worker/inference\.py$"
STAGES = (
    ("claim", r"store/jobs\.py$", r"claim"),
    ("lease", r"worker/leases\.py$", r""),
    ("lease", r"store/jobs\.py$", r"extend_leases"),
    ("finish", r"store/jobs\.py$", r"finish|fail_job|release"),  # helpers go to their caller
    ("fetch", r"store/images\.py$", r"read_images|_slice"),
    ("fetch", r"store/blobs\.py$", r"(^|\.)get$"),
    ("attention_put", r"store/blobs\.py$", r"(^|\.)put$"),
    ("attention_npy", r"numpy/lib/(npyio|format)\.py$", r""),
    ("decode", r"(model|core)/images\.py$|/PIL/", r""),
    ("notify", r"core/notify\.py$", r""),
    ("batcher", r"worker/batcher\.py$", r""),
    ("rollout", r"worker/rollout\.py$", r""),
    ("claim", INFERENCE, r"(^|\.)_claim$"),
    ("fetch", INFERENCE, r"(^|\.)_(fetch|submit|prepare)$"),
    ("decode", INFERENCE, r"(^|\.)_decode$"),
    ("attention_npy", INFERENCE, r"(^|\.)_stored$"),
    ("finish", INFERENCE, r"(^|\.)(_store|_store_batch|_settle|fail|_log_ended)$"),
    ("worker_other", INFERENCE, r""),
)
# Tried only when no frame matches STAGES.
FALLBACK_STAGES = (
    ("celery_kombu", r"/(celery|kombu|billiard|vine|amqp|redis)/|worker/(tasks|app)\.py$", r""),
    ("thread_pools", r"concurrent/futures/thread\.py$", r""),
    ("sqlalchemy_psycopg2", r"/(sqlalchemy|psycopg2)/", r""),
    ("botocore_other", r"/(boto3|botocore|urllib3|s3transfer)/", r""),
)
WORKER = "bench@control-plane"
UNBOUNDED = 10**9  # the queue's bounds: checked at every post (their cost counts), never hit
POLL_S = 0.2
SETTLE_S = 1.5  # Postgres backends publish their counters within a second of going idle
PROFILE_SPAN = (0.2, 0.8)  # the steady window, and py-spy samples: this share of jobs done
PROFILER_NICE = 10
STANDIN_ENV = "CAPTIONER_BENCH_STANDIN_MODEL_MS"
PATCH_ENV = "CAPTIONER_BENCH_STANDIN_PATCH"
PATCHED_MARK = "[bench] stand-in"  # what the sitecustomize prints into the worker's log
SETTING_MARK = "BENCHMARK MODE"  # what the worker logs when its own setting is in force
S3_REQUEST = re.compile(rb'"(GET|PUT|POST|HEAD|DELETE) ')
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::\d+)?\)$")

SITECUSTOMIZE = '''"""Written by bench_control_plane.py. With CAPTIONER_BENCH_STANDIN_PATCH set,
the model's warm-up is skipped; at 1, `Captioner.caption_batch` also becomes a fixed-cost
stand-in (CAPTIONER_BENCH_STANDIN_MODEL_MS per batch). Patched as model.inference is imported."""

import importlib.abc
import os
import sys
import time

MODE = os.environ.get("CAPTIONER_BENCH_STANDIN_PATCH", "")


def _patch(module):
    import numpy as np

    module.Captioner.warm_up = lambda self, *args, **kwargs: None
    if MODE != "1":
        return
    cost_s = float(os.environ.get("CAPTIONER_BENCH_STANDIN_MODEL_MS", "5")) / 1000
    tokens = ["a", "red", "circle"]

    def caption_batch(self, images, beam_size=1, max_length=None, sampling=None):
        time.sleep(cost_s)
        attention = np.full((len(tokens), 64), 1 / 64, dtype=np.float32)  # (T, 64)
        text, log_probs = " ".join(tokens), [-0.1] * len(tokens)
        return [module.CaptionResult(text, list(tokens), log_probs, attention, True, -0.1)
                for _ in images]

    module.Captioner.caption_batch = caption_batch
    print(f"[bench] stand-in of {cost_s * 1000:g} ms per batch patched into {module.__file__}",
          file=sys.stderr, flush=True)


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "model.inference":
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else finder.find_spec(name, path, target)
            if spec is not None:
                run = spec.loader.exec_module
                spec.loader.exec_module = lambda module: (run(module), _patch(module))
                return spec
        return None


if MODE:
    sys.meta_path.insert(0, _Hook())
'''


@dataclass
class Inputs:
    """What every run shares: the images, a model bundle, the patch folder, the options."""

    workdir: Path
    pngs: list[bytes]
    bundle: Path
    patches: Path
    args: argparse.Namespace


@dataclass
class Running:
    """One started stack: settings, processes, and where to read its counters."""

    source: Path
    standin: str
    settings: Settings
    workdir: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    moto_pid: int = 0
    moto_log: Path | None = None
    client: Client | None = None

    def log(self, name: str) -> Path:
        """The log file of the process `name`."""
        return self.workdir / f"{name}.log"


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs in the measured run")
    parser.add_argument("--batch-images", type=int, default=100, help="images per POST")
    parser.add_argument("--threads", type=int, default=4, help="client threads posting")
    parser.add_argument(
        "--both", action="store_true", help="the batch path, then single submissions"
    )
    parser.add_argument(
        "--single-threads", type=int, default=16, help="clients posting singles with --both"
    )
    parser.add_argument(
        "--backlog", type=int, default=512, help="unfinished jobs at most before a post waits"
    )
    parser.add_argument("--upload", choices=("multipart", "json"), default="multipart")
    parser.add_argument(
        "--singles",
        action="store_true",
        help="POST /v1/jobs one image at a time (try --threads 32)",
    )
    parser.add_argument(
        "--submit-only",
        action="store_true",
        help="stop the worker after the warm-up: the submissions alone (with --singles)",
    )
    parser.add_argument("--standin-ms", type=float, default=5.0, help="model cost per batch")
    parser.add_argument(
        "--standin",
        choices=("auto", "setting", "patch"),
        default="auto",
        help="auto: the setting if the source has it, else the patch",
    )
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout to run (API, worker)")
    parser.add_argument("--compare", type=Path, help="an old checkout to alternate with")
    parser.add_argument("--rounds", type=int, default=1, help="old/new pairs with --compare")
    parser.add_argument("--batch", type=int, help="BATCH_MAX_SIZE (default: the code's)")
    parser.add_argument("--beat", action="store_true", help="run beat (the sweepers) too")
    parser.add_argument(
        "--inline-bytes", type=int, help="INLINE_IMAGE_BYTES (default: the code's; 0: all in S3)"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy breakdown")
    parser.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per s")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for the run")
    parser.add_argument("--keep", type=Path, help="copy the processes' logs here")
    args = parser.parse_args()
    args.no_profile |= args.submit_only  # the profile is the worker's
    return args


def main() -> None:
    """Prepare the inputs, run each checkout (or both submission modes), print one JSON object."""
    args = parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-cp-") as tmp:
        inputs = make_inputs(Path(tmp), args)
        if args.compare:
            result = compare(inputs)
        elif args.both:
            result = both_modes(inputs)
        else:
            result = run_once(inputs, args.source.resolve(), inputs.workdir / "run")
    result |= machine(load_before)
    print(json.dumps(result))


def both_modes(inputs: Inputs) -> dict:
    """The batch path and single submissions (`--single-threads` clients) one after the other,
    each on a fresh stack, and the ratio of their steady rates."""
    args = inputs.args
    singles = argparse.Namespace(**vars(args) | {"singles": True, "threads": args.single_threads})
    runs = {
        "batches": run_once(inputs, args.source.resolve(), inputs.workdir / "batches"),
        "singles": run_once(
            replace(inputs, args=singles), args.source.resolve(), inputs.workdir / "singles"
        ),
    }
    rate = {mode: run["steady"].get("jobs_per_s") for mode, run in runs.items()}
    return runs | {"singles_over_batches": ratio(rate["singles"], rate["batches"])}


def make_inputs(workdir: Path, args: argparse.Namespace) -> Inputs:
    """64 shapes PNGs (299x299), a tiny model bundle, the sitecustomize folder."""
    from model.shapes import write_shapes_dataset

    write_shapes_dataset(workdir / "shapes", 64, seed=3, val_fraction=0.0)
    paths = sorted((workdir / "shapes" / "images" / "train").glob("*.png"))
    patches = workdir / "patches"
    patches.mkdir()
    (patches / "sitecustomize.py").write_text(SITECUSTOMIZE)
    bundle = tiny_bundle(workdir / "bundle")
    return Inputs(workdir, [p.read_bytes() for p in paths], bundle, patches, args)


def tiny_bundle(path: Path) -> Path:
    """A random bundle with a 30-word vocabulary on the seed:0 encoder (the stand-in runs)."""
    import keras
    import numpy as np

    from model.bundle import Bundle, FeatureNorm, save_bundle
    from model.config import ModelConfig
    from model.encoder import Encoder
    from model.layers import CaptionDecoder
    from model.vocab import SPECIALS, Vocabulary

    keras.utils.set_random_seed(7)
    vocab = Vocabulary(SPECIALS + tuple(f"word{i}" for i in range(26)))
    config = ModelConfig(vocab_size=len(vocab), max_length=8)
    norm = FeatureNorm(np.full(2048, 5e-4, np.float32), np.full(2048, 8e-4, np.float32))
    decoder = CaptionDecoder.from_model_config(config)
    return save_bundle(Bundle(config, vocab, decoder, norm, Encoder("seed:0").info), path)


# A short-lived process would hand its freed arrays back to the OS and fault them in again at
# every image (half its time in the kernel); a long-running worker keeps them, as these do.
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}
DECODE = """import sys, time
from pathlib import Path
from model.images import decode_image
images = [path.read_bytes() for path in sorted(Path(sys.argv[1]).glob("*.png"))]
decode_image(images[0])
started = time.process_time()
for data in images * 5:
    decode_image(data)
print((time.process_time() - started) * 1000 / (5 * len(images)))
"""


def decode_cpu_ms(inputs: Inputs, source: Path) -> float:
    """CPU milliseconds of the source's `model.images.decode_image` per image (a child process)."""
    images = inputs.workdir / "shapes" / "images" / "train"
    env = os.environ | {"PYTHONPATH": str(source)} | STEADY_MALLOC
    out = subprocess.run(
        [sys.executable, "-c", DECODE, str(images)],
        cwd=source,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(out.split()[-1])


def compare(inputs: Inputs) -> dict:
    """Old and new alternately, `--rounds` times: each side's medians and the ratios."""
    args = inputs.args
    sides = {"old": args.compare.resolve(), "new": args.source.resolve()}
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    for i in range(args.rounds):
        for side, source in sides.items():
            folder = inputs.workdir / f"{side}-{i}"
            runs[side].append(run_once(inputs, source, folder))
    summary = {side: medians(results) for side, results in runs.items()}
    keys = (
        "jobs_per_s",
        "jobs_per_s_mid80",
        "api_cpu_ms_per_job",
        "worker_cpu_ms_per_job",
        "own_cpu_ms_per_job_excl_decode",
        "postgres_cpu_ms_per_job",
        "s3_requests_per_job",
        "pg_xacts_per_job",
        "redis_commands_per_job",
        "decode_cpu_ms_per_image",
    )
    ratios = {key: ratio(summary["new"].get(key), summary["old"].get(key)) for key in keys}
    rates = {f"{side}_jobs_per_s_each": [r["jobs_per_s"] for r in runs[side]] for side in runs}
    return {"ratio_new_over_old": ratios, **summary, **rates, "rounds": args.rounds}


def ratio(new, old) -> float | None:
    """new / old, or None when either is missing or old is 0."""
    return round(new / old, 3) if new is not None and old else None


def medians(results: list[dict]) -> dict:
    """Each number's median over runs (the stages too); other values from the first run."""
    out = dict(results[0])
    for key, value in results[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            values = [r[key] for r in results if isinstance(r.get(key), int | float)]
            out[key] = round(statistics.median(values), 3)
    stages = [r.get("worker_stages_ms_per_job") for r in results]
    if all(isinstance(s, dict) for s in stages):
        names = dict.fromkeys(name for s in stages for name in s)
        out["worker_stages_ms_per_job"] = {
            name: round(statistics.median(s.get(name, 0.0) for s in stages), 3) for name in names
        }
    return out


def run_once(inputs: Inputs, source: Path, folder: Path) -> dict:
    """One stack from `source`, warmed up, then measured; decode as the worker's profile saw it
    (else the source's decode alone, in a child process)."""
    folder.mkdir(parents=True, exist_ok=True)
    with started_stack(inputs, source, folder) as run:
        figures = measure(run, inputs)
        if inputs.args.keep:
            keep_logs(run, inputs.args.keep / folder.name)
    profiled = figures.get("worker_stages_ms_per_job", {}).get("decode")
    decode_ms, where = (
        (profiled, "worker") if profiled else (decode_cpu_ms(inputs, source), "alone")
    )
    steady = figures["steady"]
    if "note" in steady:
        raise RuntimeError(f"{steady['note']}: the run is too short to measure, ask more --jobs")
    if inputs.args.submit_only:
        return figures
    own = steady["api_cpu_ms_per_job"] + steady["worker_cpu_ms_per_job"] - decode_ms
    return figures | {
        "decode_cpu_ms_per_image": round(decode_ms, 3),
        "decode_measured": where,
        "own_cpu_ms_per_job_excl_decode": round(own, 3),
    }


def keep_logs(run: Running, destination: Path) -> None:
    """Copy the processes' logs (and moto's) and the raw profile to `destination`."""
    destination.mkdir(parents=True, exist_ok=True)
    for log in [*run.workdir.glob("*.log"), run.moto_log, run.workdir / "py-spy.txt"]:
        if log and log.exists():
            shutil.copy(log, destination / log.name)


@contextmanager
def started_stack(inputs: Inputs, source: Path, folder: Path) -> Iterator[Running]:
    """Postgres, Redis and moto as harness.stack makes them; `source`'s API and worker."""
    with moto_s3_server() as endpoint, fresh_postgres() as url, redis_database() as broker:
        migrate(source, url)
        asked = {
            "batch_max_size": inputs.args.batch,
            "inline_image_bytes": inputs.args.inline_bytes,
        }
        settings = production_settings(
            folder / "data",
            url,
            broker,
            endpoint,
            model_bundle=inputs.bundle,
            max_queued_jobs=UNBOUNDED,
            max_queued_per_tenant=UNBOUNDED,
            **{name: value for name, value in asked.items() if value is not None},
        )
        run = Running(source, standin_mode(source, inputs.args.standin), settings, folder)
        run.moto_pid, run.moto_log = moto_process(endpoint)
        try:
            start_services(run, inputs)
            yield run
        finally:
            stop(list(run.processes.values()))


def migrate(source: Path, url: str) -> None:
    """Run `source`'s migrations on `url`, in a child process from that checkout."""
    code = f"from store.migrate import upgrade; upgrade({url!r})"
    env = os.environ | {"PYTHONPATH": str(source)}
    subprocess.run(
        [sys.executable, "-c", code], cwd=source, env=env, check=True, stdout=subprocess.DEVNULL
    )


def standin_mode(source: Path, wanted: str) -> str:
    """`setting` where the checkout's settings know the stand-in, else `patch` (or as asked)."""
    if wanted != "auto":
        return wanted
    settings = (source / "core" / "settings.py").read_text()
    return "setting" if "bench_standin_model_ms" in settings else "patch"


def moto_process(endpoint: str) -> tuple[int, Path]:
    """The pid of the moto_server this process started on `endpoint`, and its log file."""
    port = endpoint.rsplit(":", 1)[1]
    for pid, proc in proc_table().items():
        if proc.ppid != os.getpid():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"moto_server" in a for a in argv) and port.encode() in argv:
            return pid, Path(os.readlink(f"/proc/{pid}/fd/1"))
    raise RuntimeError(f"no moto_server child on port {port}")


def settings_env(settings: Settings) -> dict[str, str]:
    """`to_env(settings)` less the values at their defaults: each checkout applies its own."""
    bare = to_env(Settings(data_dir=Path("/-"), database_url="-", broker_url="-", s3_bucket="-"))
    return {var: value for var, value in to_env(settings).items() if bare.get(var) != value}


def child_env(run: Running, inputs: Inputs, worker: bool) -> dict[str, str]:
    """The environment of the source's processes; the worker's also asks for the stand-in."""
    path = f"{run.source}{os.pathsep}{inputs.patches}"
    env = os.environ | settings_env(run.settings) | {"PYTHONPATH": path}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if worker:
        patch = "1" if run.standin == "patch" else "warm-up"
        env |= {STANDIN_ENV: f"{inputs.args.standin_ms:g}", PATCH_ENV: patch}
    return env


def start_services(run: Running, inputs: Inputs) -> None:
    """The worker (and beat), then the API under gunicorn once the worker consumes."""
    command = [
        sys.executable,
        "-m",
        "captioner",
        "worker",
        "--queue",
        "inference",
        "--name",
        WORKER,
    ]
    run.processes["worker"] = start(run, "worker", command, child_env(run, inputs, True))
    if inputs.args.beat:
        beat = [sys.executable, "-m", "captioner", "beat"]
        run.processes["beat"] = start(run, "beat", beat, child_env(run, inputs, False))
    url = start_api(run, inputs)
    wait_ready(run.processes["worker"], run.log("worker"))
    run.client = Client(url, api_key(run), timeout=CLIENT_TIMEOUT_S)
    wait_api(run)


def start_api(run: Running, inputs: Inputs) -> str:
    """The API as production runs it (the Dockerfile's CMD: gunicorn with its config) on a free
    loopback port; its URL."""
    port = free_port()
    gunicorn = production_command()
    gunicorn[0] = str(Path(sys.executable).parent / "gunicorn")
    gunicorn[gunicorn.index("--bind") + 1] = f"127.0.0.1:{port}"
    run.processes["api"] = start(run, "api", gunicorn, child_env(run, inputs, False))
    return f"http://127.0.0.1:{port}"


def api_key(run: Running) -> str | None:
    """A key with every scope where the source checks keys; None for older code, which has no
    table for them and ignores the header."""
    store = run.source / "store"
    if not any((store / name).exists() for name in ("api_keys.py", "apikeys.py")):
        return None
    database = Database(run.settings.database_url)
    try:
        return admin_key(database, "bench")
    finally:
        database.dispose()


def start(run: Running, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start `command` in the source checkout, its output going to the log `name`."""
    with open(run.log(name), "ab") as out:
        return subprocess.Popen(
            command, cwd=run.source, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def wait_api(run: Running, timeout: float = 60) -> None:
    """Block until the API answers /healthz (raises, with its log's tail, if it exits first)."""
    wait_for_http(f"{run.client.base_url}/healthz", timeout, run.processes["api"], run.log("api"))


def measure(run: Running, inputs: Inputs) -> dict:
    """Warm up, then the measured run: rates, CPU and requests per job (the whole run, and the
    steady window), the worker's stages."""
    args = inputs.args
    with Progress(run.settings.database_url) as progress:
        warm_up(run, inputs, progress)
        sources = verify_source(run, inputs)
        if args.submit_only:
            stop([run.processes.pop("worker")])
        before = snapshot(run, progress, first=True)
        started_at = datetime.datetime.now(datetime.UTC)
        batch_ids, submit_s, followed = load(run, inputs, progress)
        after = snapshot(run, progress, first=False)
        jobs = progress.jobs(batch_ids)
    figures = per_job(before, after, args.jobs) | followed
    if args.submit_only:  # the jobs stay queued: "done" is answered
        figures["jobs_per_s"] = round(args.jobs / submit_s, 2)
    else:
        figures |= rates(jobs, started_at, args.jobs)
    return figures | {
        "submit_s": round(submit_s, 2),
        "posts_per_s": round(len(batch_ids) / submit_s, 1),
        "singles": args.singles,
        "submit_only": args.submit_only,
        "jobs": args.jobs,
        "batch_images": args.batch_images,
        "threads": args.threads,
        "backlog": args.backlog,
        "upload": args.upload,
        "standin_ms": args.standin_ms,
        "standin": run.standin,
        "source": str(run.source),
        "source_commit": commit(run.source),
        "source_files": sources,
    }


class Progress:
    """A connection to the stack's database (its queries counted, to subtract them) and one
    to the server's maintenance database (for statistics, not counted in the stack's)."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url.replace("+psycopg2", "")
        self.name = self.url.rsplit("/", 1)[1]
        self.queries = self.warm = 0

    def __enter__(self) -> Progress:
        self.db = psycopg2.connect(self.url)
        self.server = psycopg2.connect(POSTGRES_URL.replace("+psycopg2", ""))
        self.db.autocommit = self.server.autocommit = True
        self.redis = redis.Redis.from_url(f"{REDIS_URL}/0")  # its own commands: 2 a snapshot
        return self

    def __exit__(self, *exc) -> None:
        self.db.close()
        self.server.close()
        self.redis.close()

    def query(self, sql: str, params=(), server: bool = False) -> list[tuple]:
        """Rows of one query (a transaction of its own)."""
        with (self.server if server else self.db).cursor() as cursor:
            self.queries += not server
            cursor.execute(sql, params)
            return cursor.fetchall()

    def done(self) -> int:
        """How many jobs are in a terminal status."""
        sql = "SELECT count(*) FROM jobs WHERE status = ANY(%s)"
        return self.query(sql, (list(TERMINAL),))[0][0]

    def jobs(self, ids: list[str]) -> list[tuple]:
        """(status, finished_at, batch_size, predict_ms) of the batches' jobs (or the jobs')."""
        sql = (
            "SELECT status, finished_at, batch_size, predict_ms FROM jobs "
            "WHERE batch_id = ANY(%s::uuid[]) OR id = ANY(%s::uuid[])"
        )
        return self.query(sql, (ids, ids))

    def database_stats(self) -> dict[str, int]:
        """Transactions (committed and rolled back) and sessions opened in the stack's database."""
        sql = (
            "SELECT xact_commit + xact_rollback, sessions FROM pg_stat_database WHERE datname = %s"
        )
        xacts, sessions = self.query(sql, (self.name,), server=True)[0]
        return {"xacts": xacts, "sessions": sessions}

    def watch_backends(self, fresh: bool = False) -> None:
        """Note the CPU used so far by each backend of the stack's database (backends come and
        go with connections); with `fresh`, count from now on."""
        if fresh:
            self.backend_cpu: dict[int, list[float]] = {}
        sql = "SELECT pid FROM pg_stat_activity WHERE datname = %s"
        for (pid,) in self.query(sql, (self.name,), server=True):
            cpu = process_cpu_s(pid)
            if cpu is not None:  # [CPU when first seen (0 if it started since), CPU now]
                self.backend_cpu.setdefault(pid, [cpu if fresh else 0.0, cpu])[1] = cpu

    def backends_cpu_s(self) -> float:
        """CPU seconds the stack database's backends used since `watch_backends(fresh=True)`."""
        return sum(last - first for first, last in self.backend_cpu.values())

    def server_processes(self) -> tuple[set[int], int]:
        """Pids of the server's own processes (no database), and how many backends other
        databases have (someone else's load)."""
        rows = self.query("SELECT pid, datname FROM pg_stat_activity", server=True)
        others = sum(name not in (self.name, None, "test") for _, name in rows)
        return {pid for pid, name in rows if name is None}, others


def warm_up(run: Running, inputs: Inputs, progress: Progress) -> None:
    """A few small batches (or single jobs) at once (both API workers, every connection), all
    finished."""
    count = 1 if inputs.args.singles else 8
    with ThreadPoolExecutor(inputs.args.threads) as pool:
        list(pool.map(lambda _: post(run, inputs, inputs.pngs[:count]), range(inputs.args.threads)))
    wait_done(run, progress, count * inputs.args.threads, 300)
    mark = PATCHED_MARK if run.standin == "patch" else SETTING_MARK
    if mark not in run.log("worker").read_text(errors="replace"):
        raise RuntimeError(f"the worker does not use the stand-in ({mark!r} not in its log)")
    progress.warm = progress.done()


def wait_done(run: Running, progress: Progress, count: int, timeout: float) -> None:
    """Block until `count` jobs are terminal."""
    deadline = time.monotonic() + timeout
    while progress.done() < count:
        if time.monotonic() > deadline or run.processes["worker"].poll() is not None:
            raise RuntimeError(f"jobs did not finish:\n{tail(run.log('worker'))}")
        time.sleep(POLL_S)


def verify_source(run: Running, inputs: Inputs) -> dict[str, str]:
    """Where the API's and worker's packages come from in the children; raise if not source."""
    code = "import api, worker, store, core; print(api.__file__, worker.__file__)"
    env = child_env(run, inputs, False)
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=run.source,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    if not all(Path(path).is_relative_to(run.source) for path in out):
        raise RuntimeError(f"the children import {out}, not from {run.source}")
    return {"api": out[0], "worker": out[1]}


def post(run: Running, inputs: Inputs, images: list[bytes]) -> str:
    """POST /v1/batches (multipart files or JSON base64, as asked), or with `--singles` one
    image to /v1/jobs; the batch's or the job's id."""
    # No Idempotency-Key (the client's submit methods send one): it would add its own
    # transactions to every post, and the figures are per job of the bare API.
    if inputs.args.upload == "json" and not inputs.args.singles:
        body = {"images": [base64.b64encode(data).decode() for data in images]}
        return run.client.request("POST", "/v1/batches", json=body)["id"]
    path, name = ("/v1/jobs", "image") if inputs.args.singles else ("/v1/batches", "images")
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
        f'filename="{i}.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
        + data
        + b"\r\n"
        for i, data in enumerate(images)
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    return run.client.request("POST", path, content=body, headers=headers)["id"]


def load(run: Running, inputs: Inputs, progress: Progress) -> tuple[list[str], float, dict]:
    """Post every batch from the client threads, each waiting while more than `--backlog` jobs
    are unfinished, while following progress; the batch ids, the seconds the posting took, and
    the steady window's figures and the worker's profile."""
    args, pngs = inputs.args, inputs.pngs
    size = 1 if args.singles else args.batch_images
    batches = [
        [pngs[(at + i) % len(pngs)] for i in range(min(size, args.jobs - at))]
        for at in range(0, args.jobs, size)
    ]
    posted: dict = {"jobs": 0, "done": 0, "answered": 0}
    latencies: list[float] = []  # seconds each post took to be answered
    lock = threading.Lock()
    started = time.perf_counter()

    def paced(images: list[bytes]) -> str:
        while posted["jobs"] - posted["done"] > args.backlog:
            time.sleep(0.005)
        with lock:
            posted["jobs"] += len(images)
        began = time.perf_counter()
        answer = post(run, inputs, images)
        latencies.append(time.perf_counter() - began)  # list.append is atomic
        with lock:
            posted["answered"] += len(images)
        return answer

    def submit_all() -> None:
        with ThreadPoolExecutor(args.threads) as pool:
            posted["ids"] = list(pool.map(paced, batches))
        posted["seconds"] = time.perf_counter() - started

    poster = threading.Thread(target=submit_all, name="poster")
    poster.start()
    followed = follow(run, inputs, progress, posted, poster)
    poster.join()
    if "ids" not in posted:
        raise RuntimeError(f"posting failed:\n{tail(run.log('api'))}")
    cuts = statistics.quantiles(latencies, n=100)
    answered = {"post_ms_p50": round(cuts[49] * 1000, 1), "post_ms_p99": round(cuts[98] * 1000, 1)}
    return posted["ids"], posted["seconds"], followed | answered


def follow(run: Running, inputs: Inputs, progress: Progress, posted: dict, poster) -> dict:
    """Poll until every job is terminal (telling the posters how many are done); measure the
    steady window and profile the worker while `PROFILE_SPAN` of the jobs are done. With
    `--submit-only`, until every job is submitted: the window and the figures are per submit."""
    args = inputs.args
    profiler = Profiler(run, args)
    window = Window(run, progress, [int(share * args.jobs) for share in PROFILE_SPAN])
    deadline = time.monotonic() + args.timeout
    while (done := finished(progress, posted, args)) < args.jobs:
        posted["done"] = done
        worker = run.processes.get("worker")
        if time.monotonic() > deadline or (worker and worker.poll() is not None):
            raise RuntimeError(f"{done} of {args.jobs} jobs done:\n{tail(run.log('worker'))}")
        if not poster.is_alive() and "ids" not in posted:
            raise RuntimeError(f"posting failed:\n{tail(run.log('api'))}")
        window.step(done)
        if profiler.binary and not args.no_profile:
            profiler.step(done, window.span)
        progress.watch_backends()
        time.sleep(POLL_S)
    window.step(done)  # the last poll may have passed the window's end
    if profiler.process is not None:
        profiler.stop(done)
    profile = profiler.figures() if not args.no_profile else {"worker_stages_note": "--no-profile"}
    return profile | {"steady": window.figures()}


def finished(progress: Progress, posted: dict, args: argparse.Namespace) -> int:
    """Jobs done since the warm-up (submitted, with `--submit-only`)."""
    return posted["answered"] if args.submit_only else progress.done() - progress.warm


class Window:
    """The steady window: from `span[0]` jobs done to `span[1]`, past the warm-up and before the
    tail (posting and draining overlap in it); its rate and CPU per job."""

    def __init__(self, run: Running, progress: Progress, span: list[int]) -> None:
        self.run, self.progress, self.span = run, progress, span
        self.ends: list[tuple[int, float, dict]] = []  # (done, time, snapshot) at each end

    def step(self, done: int) -> None:
        """Take a snapshot when `done` reaches the next end of the window."""
        if len(self.ends) < 2 and done >= self.span[len(self.ends)]:
            snap = snapshot(self.run, self.progress, first=False, settle=False)
            self.ends.append((done, time.perf_counter(), snap))

    def figures(self) -> dict:
        """Jobs per second and the parts' CPU and requests per job over the window."""
        if len(self.ends) < 2:
            return {"note": "the jobs passed the window between two polls"}
        (first, began, before), (last, ended, after) = self.ends
        jobs = last - first
        if jobs <= 0 or ended <= began:
            return {"note": "no job ended inside the window"}
        return per_job(before, after, jobs) | {
            "jobs_per_s": round(jobs / (ended - began), 2),
            "window_jobs": jobs,
            "window_s": round(ended - began, 2),
        }


class Profiler:
    """py-spy on the worker, from `start` to `stop`, CPU samples only; stages per job."""

    def __init__(self, run: Running, args: argparse.Namespace) -> None:
        self.run, self.rate = run, args.profile_rate
        self.binary = shutil.which("py-spy", path=str(Path(sys.executable).parent))
        self.process: subprocess.Popen | None = None
        self.output = run.workdir / "py-spy.txt"
        self.jobs = 0  # jobs done while sampling

    def step(self, done: int, span: list[int]) -> None:
        """Start once `span[0]` jobs are done, stop at `span[1]`."""
        if self.process is None and not self.jobs and span[0] <= done < span[1]:
            self.start(done)
        elif self.process is not None and done >= span[1]:
            self.stop(done)

    def start(self, done: int) -> None:
        """Attach py-spy to the worker."""
        # Niced, so that on a small machine it takes less of the CPU the stack runs on.
        command = [
            "nice",
            "-n",
            str(PROFILER_NICE),
            self.binary,
            "record",
            "--pid",
            str(self.run.processes["worker"].pid),
            "--format",
            "raw",
            "--output",
            str(self.output),
            "--rate",
            str(self.rate),
            "--nonblocking",
            "--full-filenames",
        ]
        self.children_cpu = children_cpu_s()
        self.worker_cpu = tree_cpu_s(self.run.processes["worker"].pid)
        with open(self.run.log("py-spy"), "ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        self.first, self.began = done, time.perf_counter()

    def stop(self, done: int) -> None:
        """Stop sampling (py-spy writes its file on SIGINT)."""
        self.worker_cpu = tree_cpu_s(self.run.processes["worker"].pid) - self.worker_cpu
        self.seconds = time.perf_counter() - self.began
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=60)
        self.children_cpu = children_cpu_s() - self.children_cpu
        self.jobs, self.process = done - self.first, None

    def figures(self) -> dict:
        """The stages in ms per job, and how far the samples account for the worker's CPU."""
        if self.binary is None:
            return {"worker_stages_note": "py-spy is not installed in the venv: no breakdown"}
        if not self.output.exists() or not self.jobs:
            log = self.run.log("py-spy")
            why = tail(log) if log.exists() else "the jobs passed the span between two polls"
            return {"worker_stages_note": f"no profile:\n{why}"}
        samples = stage_samples(self.output)
        total = sum(samples.values())
        cpu_ms = self.worker_cpu * 1000 / self.jobs  # the stages are scaled to add up to this
        per_job = {stage: round(n / total * cpu_ms, 3) for stage, n in samples.most_common()}
        return {
            "worker_stages_ms_per_job": per_job | {"total": round(cpu_ms, 3)},
            "profile_samples": total,
            "profile_jobs": self.jobs,
            "profile_s": round(self.seconds, 2),
            "profile_jobs_per_s": round(self.jobs / self.seconds, 2),
            "profile_coverage": round(total / self.rate / self.worker_cpu, 3),
            "profiler_cpu_s": round(self.children_cpu, 2),
        }


def stage_samples(path: Path) -> Counter:
    """Samples per stage in a py-spy raw file (`frame;frame;... count`, innermost last)."""
    counts: Counter = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[stage_of(stack.split(";"))] += int(count)
    return counts


def stage_of(frames: list[str]) -> str:
    """The stage of one stack: its innermost frame matching STAGES, else FALLBACK_STAGES."""
    parsed = [m.groups() for f in reversed(frames) if (m := FRAME.match(f))]
    for rules in (STAGES, FALLBACK_STAGES):
        for func, path in parsed:
            for stage, file_pattern, func_pattern in rules:
                if re.search(file_pattern, path) and re.search(func_pattern, func):
                    return stage
    return "other"


class Proc(NamedTuple):
    """One process in /proc: its name, parent, CPU seconds used, and those of its children
    that ended and were waited for."""

    name: str
    ppid: int
    cpu: float  # utime + stime
    reaped: float  # cutime + cstime


def proc_table() -> dict[int, Proc]:
    """Every process by pid."""
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # ended meanwhile
        name, fields = text[text.index("(") + 1 : text.rindex(")")], text.rsplit(")", 1)[1].split()
        times = [int(value) / tick for value in fields[11:15]]
        table[int(stat.parent.name)] = Proc(name, int(fields[1]), sum(times[:2]), sum(times[2:]))
    return table


def tree(table: dict[int, Proc], root: int) -> set[int]:
    """`root` and its descendants in a process table."""
    pids, grew = {root}, True
    while grew:
        more = {pid for pid, proc in table.items() if proc.ppid in pids} - pids
        pids, grew = pids | more, bool(more)
    return pids & set(table)


def tree_cpu_s(root: int) -> float:
    """CPU seconds used so far by `root` and its descendants (those ended too)."""
    table = proc_table()
    return sum(table[pid].cpu + table[pid].reaped for pid in tree(table, root))


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds used so far by one process (utime + stime), None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """CPU seconds of this process's finished (waited-for) children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def snapshot(run: Running, progress: Progress, first: bool, settle: bool = True) -> dict:
    """Counters now: CPU per process, Postgres transactions, Redis commands, S3 requests (after
    letting the backends publish their counters, if `settle`)."""
    if settle:
        time.sleep(SETTLE_S)
    progress.watch_backends(fresh=first)
    server, others = progress.server_processes()
    commands = progress.redis.info("stats")["total_commands_processed"]
    db = int(run.settings.broker_url.rsplit("/", 1)[1])
    foreign = sum(client["db"] not in (0, db) for client in progress.redis.client_list())
    requests = Counter(m.group(1).decode() for m in S3_REQUEST.finditer(run.moto_log.read_bytes()))
    return {
        "procs": proc_table(),
        "postgres_server": server,
        "pg": progress.database_stats(),
        "postgres_backends": progress.backends_cpu_s(),
        "backends": len(progress.backend_cpu),
        "queries": progress.queries,
        "redis": commands,
        "s3": requests,
        "pid": {name: p.pid for name, p in run.processes.items()} | {"moto": run.moto_pid},
        "others": {"postgres_other_backends": others, "redis_other_clients": foreign},
    }


def roles(snap: dict) -> dict[str, tuple[set[int], bool]]:
    """The pids of each part in a snapshot, and whether their ended children count (not for
    this process's: py-spy; nor per backend: the postmaster reaps them all)."""
    table = snap["procs"]
    parts = {name: (tree(table, pid), True) for name, pid in snap["pid"].items()}
    by_name = {
        name: {pid for pid, proc in table.items() if proc.name == name}
        for name in ("postgres", "redis-server")
    }
    return parts | {
        "postgres_server": (snap["postgres_server"] & by_name["postgres"], False),
        "postgres_all": (by_name["postgres"], True),
        "redis": (by_name["redis-server"], True),
        "client": ({os.getpid()}, False),
    }


def cpu_used(before: dict, after: dict, pids: set[int], reaped: bool) -> float:
    """CPU seconds the processes `pids` used between two snapshots."""
    zero = Proc("", 0, 0.0, 0.0)
    return sum(
        after[p].cpu
        - before.get(p, zero).cpu
        + reaped * (after[p].reaped - before.get(p, zero).reaped)
        for p in pids
    )


def per_job(before: dict, after: dict, jobs: int) -> dict:
    """CPU milliseconds per job of each part, and requests per job of each server."""
    out = {}
    for role, (pids, reaped) in roles(after).items():
        used = cpu_used(before["procs"], after["procs"], pids, reaped)
        out[f"{role}_cpu_ms_per_job"] = round(used * 1000 / jobs, 3)
    backends = (after["postgres_backends"] - before["postgres_backends"]) * 1000 / jobs
    out["postgres_cpu_ms_per_job"] = round(out.pop("postgres_server_cpu_ms_per_job") + backends, 3)
    s3 = after["s3"] - before["s3"]
    pg = {key: after["pg"][key] - before["pg"][key] for key in after["pg"]}
    xacts = pg["xacts"] - (after["queries"] - before["queries"])
    return out | {
        "s3_requests_per_job": round(sum(s3.values()) / jobs, 4),
        **{f"s3_{method.lower()}s_per_job": round(n / jobs, 4) for method, n in s3.items()},
        "pg_xacts_per_job": round(xacts / jobs, 3),
        "pg_sessions_per_job": round(pg["sessions"] / jobs, 4),
        "redis_commands_per_job": round((after["redis"] - before["redis"] - 2) / jobs, 3),
        "postgres_backends_seen": after["backends"],
        **after["others"],
    }


def rates(jobs: list[tuple], started_at: datetime.datetime, expected: int) -> dict:
    """Jobs per second from the first post to the last completion, and over the middle 80%."""
    statuses = Counter(status for status, *_ in jobs)
    if statuses.get("succeeded") != expected:
        raise RuntimeError(f"expected {expected} jobs to succeed, got {dict(statuses)}")
    finished = sorted(row[1] for row in jobs)
    low, high = expected // 10, expected - 1 - expected // 10
    middle = (finished[high] - finished[low]).total_seconds()
    return {
        "jobs_per_s": round(expected / (finished[-1] - started_at).total_seconds(), 2),
        "jobs_per_s_mid80": round((high - low) / middle, 2) if middle > 0 else None,
        "mean_batch_size": round(statistics.mean(row[2] for row in jobs), 2),
        "median_predict_ms": round(statistics.median(row[3] for row in jobs), 2),
    }


def commit(source: Path) -> str:
    """The checkout's commit, `+dirty` when tracked files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(source), *args], capture_output=True, text=True
        ).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")


def machine(load_before: tuple[float, ...]) -> dict:
    """The machine, the date, and `uptime`'s load averages before and after."""
    return {
        "machine": f"{platform.machine()}, {cpu_model()}",
        "cpus": os.cpu_count(),
        "date": datetime.date.today().isoformat(),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    }


def cpu_model() -> str:
    """The processor's name from /proc/cpuinfo."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    main()
