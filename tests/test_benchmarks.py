"""Every benchmark runs: each script in benchmarks/, at tiny sizes, through the code path of a
real run, answers one JSON object with its main figures.

Each script runs as `make bench` runs it: a subprocess from the repository root with this
Python, two at a time (they spend much of their time starting servers and compiling, each on
one core), started together when the module's first test runs. Their temporary folders go
under pytest's tmp_path (TMPDIR). A new script must get an entry in SMOKE: the table and the
folder are compared. The scripts that train a model on
generated images are marked slow, as tests/test_training.py is. The stack's benchmarks need
the local Postgres and Redis, as the stack tests do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
TIMEOUT_S = 600  # each; they take seconds to about a minute on 2 busy cores
AT_ONCE = 2


@dataclass(frozen=True)
class Smoke:
    """A script's tiny arguments (`{tmp}`: the test's tmp_path), and the figures its JSON must
    hold as numbers, each named by its path through nested objects (`a.b`)."""

    args: str
    figures: tuple[str, ...]
    slow: bool = False  # trains a model on generated images


SMOKE = {
    "bench_control_plane.py": Smoke(
        "--both --jobs 200 --batch-images 8 --threads 2 --single-threads 4 --batch 8"
        " --standin-ms 50 --no-profile",
        ("batches.steady.jobs_per_s", "batches.steady.api_cpu_ms_per_job",
         "batches.own_cpu_ms_per_job_excl_decode", "singles.steady.jobs_per_s",
         "singles.steady.postgres_cpu_ms_per_job", "singles.pg_xacts_per_job",
         "singles_over_batches"),
    ),
    "bench_decoders.py": Smoke(  # one decoder (the GRU compiles fastest), no output-bias part
        "--work {tmp}/work --n 10 --epochs 1 --reps 1 --sets shapes --decoders gru"
        " --skip-output-bias",
        ("encoder_b32_ms", "shapes.gru.fit_s", "shapes.gru.first_epoch_loss",
         "shapes.gru.beam1.bleu4", "shapes.gru.beam3.cider", "shapes.gru.greedy_b32_ms"),
        slow=True,
    ),
    "bench_faults.py": Smoke(
        "--clients 4 --outage-s 2 --warm-s 1 --phase-s 2 --lease-s 6 --sweep-s 2"
        " --kill-jobs 48 --victim-ms 1000",
        ("blob_store.accepted", "blob_store.sweeps", "blob_store.orphan_images", "redis.p99_ratio",
         "worker_kill.pending_at_kill", "worker_kill.leases"),
    ),
    "bench_images.py": Smoke(
        "--images 4 --large 2 --reps 1",
        ("cpu_ms_per_image", "scaling_1_to_2", "free_cores_measured",
         "jpeg_640_images_per_s_1_thread", "jpeg_1280_worker_speedup"),
    ),
    "bench_model.py": Smoke(
        "--reps 1 --batches 1",
        ("encoder_ips_b1", "caption_ips_b1", "caption_vs_encoder", "decode_speedup_vs_eager",
         "train_steps_per_s_compiled"),
    ),
    "bench_ood.py": Smoke(  # a shapes and a scenes model of one epoch on 30 images
        "--work {tmp}/work --size 30 --epochs 1 --scenes-size 30 --scenes-epochs 1 --held-out 6"
        " --decoders gru",
        ("shapes_model.photos.auroc.mahalanobis", "shapes_model.photos.flagged",
         "shapes_model.held_out_flagged", "shapes_model.scenes.auroc.mahalanobis",
         "shapes_model.cost.share_of_encoder", "calibration_on_held_out_scenes.gru.ece_before",
         "calibration_on_held_out_scenes.gru.ece_after",
         "calibration_on_held_out_scenes.gru.ece_noise_floor", "shapes_model.threshold_images"),
        slow=True,
    ),
    "bench_pipeline.py": Smoke(
        "--jobs 8 --latency-jobs 2 --reps 1 --batch 1 --auth-requests 5 --clients 2"
        " --closed-loop-jobs 4",
        ("pipeline_jobs_per_s", "raw_images_per_s", "ratio", "p50_ms", "single_image_ms",
         "auth_identify_p50_ms", "auth_http_added_p50_ms", "closed_loop_ratio"),
    ),
    "bench_scaleout.py": Smoke(
        "--workers 1 --jobs 16 --threads 2 --singles",  # the batch path: bench_control_plane
        ("by_workers.1.jobs_per_s", "by_workers.1.speedup", "by_workers.1.efficiency"),
    ),
    "bench_training.py": Smoke(
        "--n 10 --epochs 1 --batch-sizes 16 --swaps 1 --batch-max 1 --pause-s 0.5",
        ("training.feature_extraction_images_per_s", "training.batch_16.images_per_s",
         "training.batch_16.steps_per_s", "swap.median_promote_to_serving_s",
         "swap.median_worker_load_and_compile_s", "swap.failed_jobs"),
        slow=True,
    ),
    "bench_webhooks.py": Smoke(
        "--jobs 10 --latency-jobs 2",
        ("deliveries_per_s", "raw_posts_per_s", "ratio", "p50_ms", "duplicates"),
    ),
}  # fmt: skip


def test_every_benchmark_has_a_smoke_test():
    scripts = {path.name for path in BENCHMARKS.glob("*.py")}
    assert set(SMOKE) == scripts, "each script in benchmarks/ needs its entry in SMOKE"


def run(command: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run a script from the repository root: exit status, stdout, stderr. Past TIMEOUT_S its
    whole process group (the stack's servers and workers too) is stopped."""
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
        pytest.fail(f"{command[1]} ran past {TIMEOUT_S} s:\n{stderr[-4000:]}")
    return process.returncode, stdout, stderr


def last_json(stdout: str) -> dict:
    """The JSON object a script printed: all of stdout, else its last line."""
    text = stdout.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return json.loads(text.splitlines()[-1])


def figure(result: dict, path: str):
    """The value at a dotted path through nested objects."""
    value = result
    for key in path.split("."):
        assert isinstance(value, dict) and key in value, f"no {path!r} in the output"
        value = value[key]
    return value


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory) -> dict[str, Future]:
    """Every selected script's run, AT_ONCE at a time, the slowest first: (status, stdout,
    stderr) futures by script."""
    module = request.module.__name__
    selected = [
        item.callspec.params["script"]
        for item in request.session.items
        if item.module.__name__ == module and hasattr(item, "callspec")
    ]
    order = sorted(selected, key=lambda name: (not SMOKE[name].slow, name))
    with ThreadPoolExecutor(AT_ONCE) as pool:
        yield {name: pool.submit(run_tiny, name, tmp_path_factory.mktemp(name)) for name in order}


def run_tiny(script: str, folder: Path) -> tuple[int, str, str]:
    """Run `script` with its tiny arguments, its temporary files in `folder`."""
    temporary = folder / "tmp"
    temporary.mkdir()
    command = [sys.executable, str(BENCHMARKS / script)]
    command += [arg.format(tmp=folder) for arg in SMOKE[script].args.split()]
    env = os.environ | {"TMPDIR": str(temporary), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return run(command, env)


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(name, marks=[pytest.mark.slow] if smoke.slow else [])
        for name, smoke in SMOKE.items()
    ],
)
def test_benchmark_runs_tiny(script, runs):
    returncode, stdout, stderr = runs[script].result()
    assert returncode == 0, f"{script} exited {returncode}:\n{stderr[-4000:]}"
    result = last_json(stdout)
    assert isinstance(result, dict)
    for path in SMOKE[script].figures:
        value = figure(result, path)
        assert isinstance(value, int | float) and not isinstance(value, bool), (path, value)
