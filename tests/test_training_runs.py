"""Training runs end to end: API → training worker → registry → inference workers' rollout.

Postgres, Redis, moto S3, a training worker, an inference worker, a webhook worker and beat run
as real processes. The inference worker starts before any model exists and waits for the first
promotion. Leases, polls and the sweeper are shortened so a killed worker is noticed in seconds.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from captioner.processes import READY_MARK
from core.archives import pack_dataset
from core.settings import to_env
from model.shapes import COLORS, write_shapes_dataset
from store import registry
from store.payloads import worker_label

SHAPES = {"type": "shapes", "size": 300, "seed": 3}  # features extracted once, then cached
QUICK = {"batch_size": 16}
BLEU4_FLOOR = 0.5  # 12 epochs on 240 images reach about 0.8 (measured: 0.77 after 6)
INFERENCE, TRAINING = "inference@stack", "training@stack"
STACK = {
    "workers": ["training", "inference", "webhooks"], "beat": True,
    "wait": ["training@stack", "webhooks@stack"],  # the inference worker waits for a model
    "batch_max_size": 4, "sweep_interval_s": 1.0, "model_poll_s": 0.3, "training_lease_s": 6.0,
    "webhook_schedule": (0.0, 0.5, 0.5), "webhook_timeout_s": 2.0,
}  # fmt: skip


def train(stack, **body) -> dict:
    """POST /v1/training-runs on the shapes set (unless `body` names another dataset)."""
    return stack.client.request("POST", "/v1/training-runs", json={"dataset": SHAPES} | body)


def get_run(stack, run_id: str) -> dict:
    return stack.client.request("GET", f"/v1/training-runs/{run_id}")


def wait_run(stack, run_id: str, done, timeout: float = 300) -> dict:
    """The run once `done(run)` holds."""
    deadline = time.monotonic() + timeout
    while not done(run := get_run(stack, run_id)):
        assert time.monotonic() < deadline, json.dumps(run, indent=1)
        time.sleep(0.2)
    return run


def ended(run: dict) -> bool:
    return run["status"] in ("succeeded", "failed", "canceled")


def promote(stack, version: str) -> None:
    stack.client.request("POST", f"/v1/models/{version}/promote")


def serving(stack, version: str | None, timeout: float = 60) -> dict:
    """The inference worker's row once it serves `version` (None: nothing yet)."""
    deadline = time.monotonic() + timeout
    while True:
        workers = stack.client.request("GET", "/v1/workers")["workers"]
        found = [w for w in workers if w["worker"] == worker_label(INFERENCE)]
        if found and found[0]["model_version"] == version:
            return found[0]
        assert time.monotonic() < deadline, found
        time.sleep(0.1)


def serve(stack, version: str) -> dict:
    """Promote `version` and wait until the inference worker serves it."""
    promote(stack, version)
    return serving(stack, version)


def caption(stack, image: bytes) -> dict:
    return stack.client.wait(stack.client.submit(image), timeout=60).raw


@pytest.fixture(scope="module")
def image(shapes_dir) -> bytes:
    return sorted((shapes_dir / "images" / "val").glob("*.png"))[0].read_bytes()


@pytest.fixture(scope="module")
def before_any_model(stack) -> dict:
    """The service as it is before the first run: what the inference worker and registry say."""
    return {
        "worker": serving(stack, None),  # it reports that it serves nothing yet
        "log": stack.log(INFERENCE).read_text(errors="replace"),
        "models": stack.client.request("GET", "/v1/models"),
    }


@pytest.fixture(scope="module")
def first_run(stack, receiver, before_any_model, image) -> dict:
    """A run from scratch on the shapes set, if_better, with every webhook event; what was seen
    of it while it ran, its model version right after, and a caption by the worker then."""
    hook = receiver.script("/run")
    run = train(
        stack,
        hyperparameters=QUICK | {"epochs": 12, "patience": 12},
        promotion={"policy": "if_better", "metric": "bleu4"},
        webhook=hook,
        webhook_events=["start", "progress", "completed"],
    )
    seen: list[dict] = []
    run = wait_run(stack, run["id"], lambda state: seen.append(state) or ended(state), 600)
    assert run["status"] == "succeeded", run["error"]
    model = stack.client.request("GET", f"/v1/models/{run['model_version']}")
    stack.wait_ready(INFERENCE)
    return {"run": run, "seen": seen, "model": model, "caption": caption(stack, image)}


def test_an_inference_worker_waits_for_the_first_promoted_model(before_any_model):
    assert before_any_model["worker"]["refused"] is None
    assert READY_MARK not in before_any_model["log"]
    assert before_any_model["models"] == {"active": None, "models": []}


def test_the_wait_for_a_first_model_is_logged_once(stack, first_run):
    log = stack.log(INFERENCE).read_text(errors="replace")  # minutes of polls every 2 s
    assert log.count("no model version it can serve is active") == 1


def test_a_run_trains_reports_progress_registers_and_becomes_active(first_run):
    run, seen, model = first_run["run"], first_run["seen"], first_run["model"]
    assert run["status"] == "succeeded", run["error"]
    assert (run["model_version"], run["attempts"]) == ("v1", 1)
    assert run["promotion_result"]["promoted"] is True
    assert {"dataset", "features", "training"} <= {
        s["progress"]["phase"] for s in seen if s["progress"]
    }
    steps = [s["progress"] for s in seen if (s["progress"] or {}).get("phase") == "training"]
    assert steps and all(
        p["loss"] > 0 and p["images_per_s"] > 0 and p["steps_per_s"] > 0 and p["eta_s"] >= 0
        for p in steps
    )
    assert [row["epoch"] for row in run["history"]] == list(range(1, len(run["history"]) + 1))

    assert model["version"] == "v1"
    assert model["active"] is True and model["parent"] is None
    assert model["metrics"]["bleu4"] >= BLEU4_FLOOR, model["metrics"]
    assert model["dataset"] == SHAPES and model["training_run_id"] == run["id"]
    assert model["encoder"]["weights"] == "seed:0" and len(model["encoder"]["fingerprint"]) == 16
    assert first_run["caption"]["result"]["model_version"] == "v1"


def test_a_run_announces_start_progress_at_most_every_10_s_and_completion(
    stack, receiver, first_run
):
    run = first_run["run"]
    deliveries = stack.client.request("GET", f"/v1/training-runs/{run['id']}/deliveries")
    events = [d["event"] for d in deliveries["deliveries"]]
    assert events[0] == "training_run.started" and events[-1] == "training_run.completed"
    assert "training_run.progress" in events
    messages = receiver.wait("/run", len(events), timeout=30)
    bodies = [json.loads(m.body) for m in messages]
    assert bodies[-1]["data"]["status"] == "succeeded"
    assert bodies[-1]["data"]["model_version"] == "v1"
    times = [b["timestamp"] for b in bodies if b["type"] == "training_run.progress"]
    moments = [time.mktime(time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S")) for t in times]
    assert all(b - a >= 9 for a, b in zip(moments, moments[1:], strict=False)), times


@pytest.fixture(scope="module")
def imported(stack, first_run, trained_bundle) -> str:
    """The suite's well-trained bundle, registered through `captioner models import`."""
    done = subprocess.run(
        [sys.executable, "-m", "captioner", "models", "import", str(trained_bundle)],
        env=os.environ | to_env(stack.settings),
        capture_output=True,
        text=True,
        check=True,
    )
    registered = re.fullmatch(r"registered \S+ as (v\d+)\n", done.stdout)
    assert registered, done.stdout + done.stderr
    return registered.group(1)


def test_jobs_during_a_swap_all_succeed_and_later_ones_carry_the_new_version(
    stack, imported, image
):
    worker, listed = swap_under_load(stack, image, "v1", imported)
    # The swap outlasted the window, yet the worker was listed all along: its heartbeat does
    # not wait for the rollout thread (when that thread reported alone, a swap emptied the list).
    assert worker["swap_ms"] > SEEN_WITHIN_S * 1000
    assert len(listed) > 10 and all(INFERENCE in names for names in listed)


def swap_under_load(stack, image: bytes, old: str, new: str) -> tuple[dict, list[set[str]]]:
    """Serve `old`, then promote `new` while jobs arrive every 50 ms: every job succeeds, on
    one version or the other, and those sent after the swap on `new`. Returns the worker's
    row and the worker names /v1/workers' query saw during the swap."""
    serve(stack, old)
    submitted: list[tuple[str, float]] = []
    stop_at = threading.Event()

    def submit_steadily() -> None:
        while not stop_at.is_set():
            submitted.append((stack.client.submit(image).id, time.monotonic()))
            time.sleep(0.05)

    sender = threading.Thread(target=submit_steadily)
    sender.start()
    try:
        time.sleep(1.0)
        with watching_workers(stack) as listed:
            worker = serve(stack, new)
        swapped = time.monotonic()
        time.sleep(1.5)
    finally:
        stop_at.set()
        sender.join()
    jobs = [(stack.client.wait(job_id, timeout=60).raw, at) for job_id, at in submitted]
    assert all(job["status"] == "succeeded" for job, _ in jobs), [j["error"] for j, _ in jobs]
    versions = [job["result"]["model_version"] for job, _ in jobs]
    assert set(versions) == {old, new}
    assert all(job["result"]["model_version"] == new for job, at in jobs if at > swapped)
    assert worker["swap_ms"] > 0 and worker["refused"] is None
    assert max(job["timings"]["total_ms"] for job, _ in jobs) < 15_000
    return worker, listed


TRANSFORMER = {"decoder": "transformer", "embedding_dim": 64, "heads": 2, "ff_units": 128}


@pytest.fixture(scope="module")
def transformer(stack, first_run) -> dict:
    """A small Transformer trained by a run on the first run's set (its features are cached),
    not promoted: its run and its registry entry."""
    run = train(
        stack,
        hyperparameters=QUICK | {"epochs": 8, "learning_rate": 1e-3, "patience": 8},
        model=TRANSFORMER,
        promotion="never",
    )
    run = wait_run(stack, run["id"], ended, 600)
    assert run["status"] == "succeeded", run["error"]
    return {"run": run, "model": stack.client.request("GET", f"/v1/models/{run['model_version']}")}


def test_a_run_trains_the_architecture_its_model_block_names(transformer, first_run):
    run, model = transformer["run"], transformer["model"]
    assert run["model"]["decoder"] == "transformer" and run["model"]["heads"] == 2
    assert model["architecture"] | TRANSFORMER == model["architecture"]  # sizes as asked
    assert first_run["model"]["architecture"]["decoder"] == "gru"
    assert model["active"] is False
    assert all(0 < row["accuracy"] <= 1 and row["loss"] > 0 for row in run["history"])
    assert run["history"][-1]["accuracy"] > run["history"][0]["accuracy"]  # it learned
    # 8 small epochs at 1e-3 pass; at 3e-3 this run ended at BLEU-4 0.000003 (Keras 3.15.1)
    assert model["metrics"]["bleu4"] > 0.1, model["metrics"]


def test_the_worker_swaps_between_architectures_under_load(stack, imported, transformer, image):
    version = transformer["model"]["version"]
    swap_under_load(stack, image, imported, version)  # GRU → Transformer
    job = caption(stack, image)
    assert job["result"]["model_version"] == version and job["result"]["caption"]
    attention = stack.client.attention(job["id"])  # a grid per word
    assert attention.shape == (len(job["result"]["tokens"]), 8, 8)
    np.testing.assert_allclose(attention.astype(np.float32).sum((1, 2)), 1.0, atol=1e-2)
    swap_under_load(stack, image, version, imported)  # and back


def test_a_sampled_job_repeats_with_its_seed_on_the_worker(stack, imported, image):
    serve(stack, imported)
    sampled = [stack.client.submit(image, temperature=1.5, seed=seed) for seed in (7, 7, 8)]
    jobs = [job.raw for job in stack.client.wait_all(sampled, timeout=60, progress=False)]
    assert all(job["status"] == "succeeded" for job in jobs), [job["error"] for job in jobs]
    assert [job["options"]["seed"] for job in jobs] == [7, 7, 8]
    assert jobs[0]["result"]["tokens"] == jobs[1]["result"]["tokens"]


SEEN_WITHIN_S = 3 * STACK["model_poll_s"]  # /v1/workers' window, as short as the stack allows


@contextmanager
def watching_workers(stack) -> Iterator[list[set[str]]]:
    """While the block runs, read every 50 ms which workers reported within SEEN_WITHIN_S (the
    query /v1/workers runs); the list holds each reading's worker names."""
    readings: list[set[str]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.05):
            with stack.db.session() as session:
                workers = registry.serving_workers(session, SEEN_WITHIN_S)
                readings.append({w.worker for w in workers})

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield readings
    finally:
        done.set()
        watcher.join()


def test_promoting_an_older_version_rolls_back(stack, imported, image):
    serve(stack, imported)
    serve(stack, "v1")
    assert caption(stack, image)["result"]["model_version"] == "v1"
    models = stack.client.request("GET", "/v1/models")
    assert models["active"] == "v1"
    serve(stack, imported)
    assert caption(stack, image)["result"]["model_version"] == imported


def another_encoder(bundle, folder):
    from model.bundle import save_bundle
    from model.encoder import EncoderInfo

    return save_bundle(replace(bundle, encoder=EncoderInfo("seed:9", "0123456789abcdef")), folder)


def edited_config(**changes):
    """A bundle as a newer captioner might write it: its config.json with `changes`
    (`model` entries are merged into the model settings)."""

    def make(bundle, folder):
        from model.bundle import save_bundle

        path = save_bundle(bundle, folder)
        config = json.loads((path / "config.json").read_text())
        config["model"] |= changes.get("model", {})
        config |= {key: value for key, value in changes.items() if key != "model"}
        (path / "config.json").write_text(json.dumps(config))
        return path

    return make


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (another_encoder, "0123456789abcdef"),
        (edited_config(model={"decoder": "lstm"}), "decoder 'lstm' is not one"),
        (edited_config(model={"experts": 8}), "settings this version does not know: experts"),
        (edited_config(format=3), "bundle format 3 is not one this version reads"),
    ],
    ids=["another encoder", "another decoder", "an unknown setting", "a newer format"],
)
def test_a_bundle_it_cannot_build_is_refused_and_the_old_one_serves_on(
    stack, imported, image, random_bundle, tmp_path, make, reason
):
    from worker.bundles import import_bundle

    serve(stack, imported)
    path = make(random_bundle, tmp_path / "bundle")
    version = import_bundle(stack.db, stack.blobs, path, promote=True)
    deadline = time.monotonic() + 30
    while (worker := serving(stack, imported))["refused"] is None or worker["refused"][
        "version"
    ] != version:
        assert time.monotonic() < deadline, worker
        time.sleep(0.1)
    assert reason in worker["refused"]["reason"]
    assert caption(stack, image)["result"]["model_version"] == imported
    promote(stack, imported)


def test_cancel_stops_a_run_at_the_next_step_and_keeps_its_checkpoint(stack, first_run):
    run = train(stack, hyperparameters=QUICK | {"epochs": 500, "patience": 500}, promotion="never")
    wait_run(stack, run["id"], lambda r: len(r["history"]) >= 1)
    asked = stack.client.request("POST", f"/v1/training-runs/{run['id']}/cancel")
    assert asked["cancel_requested"] is True
    asked_at = time.monotonic()
    done = wait_run(stack, run["id"], lambda r: r["status"] != "running", timeout=60)
    assert done["status"] == "canceled" and done["error"]["code"] == "canceled"
    assert time.monotonic() - asked_at < 15
    assert done["model_version"] is None and len(done["history"]) < 500
    kept = stack.blobs.list(done["checkpoint"]["key"])
    assert any(key.endswith("checkpoints/checkpoint") for key in kept), kept
    assert stack.processes[TRAINING].poll() is None  # the worker goes on


def test_a_killed_training_workers_run_resumes_from_its_checkpoint(stack, first_run):
    run = train(stack, hyperparameters=QUICK | {"epochs": 6, "patience": 6}, promotion="never")
    wait_run(stack, run["id"], lambda r: len(r["history"]) >= 2)
    stack.processes[TRAINING].send_signal(signal.SIGKILL)
    stack.processes[TRAINING].wait()
    stack.start_worker("training", wait=False)
    done = wait_run(stack, run["id"], ended, timeout=300)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2
    assert done["progress"]["resumed_from_epoch"] >= 2
    assert [row["epoch"] for row in done["history"]] == [1, 2, 3, 4, 5, 6]
    model = stack.client.request("GET", f"/v1/models/{done['model_version']}")
    assert model["active"] is False  # promotion: never


def test_an_uploaded_dataset_fine_tunes_a_base_version(stack, imported, tmp_path):
    folder = write_shapes_dataset(tmp_path / "upload", 60, seed=4, val_fraction=0.25)
    dataset = stack.client.upload_dataset(pack_dataset(folder, tmp_path / "up.zip")).raw
    promote(stack, imported)  # the version to beat
    run = train(
        stack,
        dataset={"type": "upload", "id": dataset["id"]},
        base_version=imported,
        hyperparameters=QUICK | {"epochs": 2},
    )
    done = wait_run(stack, run["id"], ended)
    assert done["status"] == "succeeded", done["error"]
    model = stack.client.request("GET", f"/v1/models/{done['model_version']}")
    assert model["parent"] == imported and model["dataset"]["id"] == dataset["id"]
    decision = done["promotion_result"]  # if_better: judged on the same validation images
    assert decision["active"] is not None and decision["candidate"] is not None
    assert decision["promoted"] == (decision["candidate"] > decision["active"])
    assert model["active"] is decision["promoted"]


def one_shape(color: str, shape: str, seed: int) -> bytes:
    """A scene unlike any in the shapes set: a single object (the set always has two)."""
    rng = np.random.default_rng(seed)
    grey = rng.integers(238, 251, size=(299, 299, 1)).repeat(3, axis=2).astype(np.uint8)
    image = Image.fromarray(grey, "RGB")
    x, y = (int(v) for v in rng.integers(60, 160, size=2))
    box, fill = (x, y, x + 80, y + 80), COLORS[color]
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    else:
        draw.rectangle(box, fill=fill)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_corrections_teach_the_next_version_what_it_got_wrong(stack, imported):
    serve(stack, imported)
    truths = {
        "a red circle": one_shape("red", "circle", 1),
        "a blue square": one_shape("blue", "square", 2),
    }
    jobs = {truth: caption(stack, image) for truth, image in truths.items()}
    said = {truth: job["result"]["caption"] for truth, job in jobs.items()}
    assert all(said[truth] != truth for truth in truths), said  # it always names two objects
    for truth, job in jobs.items():
        stack.client.correct(job["id"], truth)
    run = train(
        stack,
        dataset={"type": "shapes", "size": 60, "seed": 6},
        base_version=imported,
        # 6 epochs learnt one of the two corrections on this machine (the best epoch is picked
        # on the shapes set's validation split, which the corrections are not in); 10 learn both.
        hyperparameters=QUICK | {"epochs": 10, "patience": 10},
        promotion="always",
        feedback={"weight": 20},
    )
    assert run["dataset"]["feedback"]["corrections"] >= len(truths)
    done = wait_run(stack, run["id"], ended)
    assert done["status"] == "succeeded", done["error"]
    serving(stack, done["model_version"])
    now = {truth: caption(stack, image)["result"]["caption"] for truth, image in truths.items()}
    assert now == {truth: truth for truth in truths}, (said, now)
