"""Training runs end to end: API → training worker → registry → inference workers' rollout.

Postgres, Redis, moto S3, a training worker, an inference worker, a webhook worker and beat run
as real processes. The inference worker starts before any model exists and waits for the first
promotion. Leases, polls and the sweeper are shortened so a killed worker is noticed in seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis

from captioner.client import Client
from captioner.processes import READY_MARK, api_server, start_beat, start_worker, stop, wait_ready
from core.archives import pack_dataset
from core.settings import Settings, to_env
from model.shapes import write_shapes_dataset
from store.blobs import open_blob_store
from store.migrate import upgrade
from tests.databases import fresh_postgres
from tests.receiver import Receiver, receiver
from tests.s3 import ACCESS_KEY, REGION, SECRET_KEY, moto_s3_server

REDIS_URL = "redis://127.0.0.1:6379/8"  # a database of its own, emptied by the fixture
SHAPES = {"type": "shapes", "size": 300, "seed": 3}  # features extracted once, then cached
QUICK = {"batch_size": 16}
BLEU4_FLOOR = 0.5  # 12 epochs on 240 images reach about 0.8 (measured: 0.77 after 6)


@dataclass
class Stack:
    """The running service; tests restart the training worker."""

    settings: Settings
    client: Client
    receiver: Receiver
    logs: Path
    workers: dict[str, subprocess.Popen]

    def start(self, queue: str) -> subprocess.Popen:
        log = self.logs / f"{queue}.log"
        self.workers[queue] = start_worker(self.settings, log, f"{queue}@test", queue)
        return self.workers[queue]

    def train(self, **body) -> dict:
        return self.client.request("POST", "/v1/training-runs", {"dataset": SHAPES} | body)

    def run(self, run_id: str) -> dict:
        return self.client.request("GET", f"/v1/training-runs/{run_id}")

    def wait_run(self, run_id: str, done, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while not done(run := self.run(run_id)):
            assert time.monotonic() < deadline, json.dumps(run, indent=1)
            time.sleep(0.2)
        return run

    def promote(self, version: str) -> None:
        self.client.request("POST", f"/v1/models/{version}/promote")

    def workers_view(self) -> list[dict]:
        return self.client.request("GET", "/v1/workers")["workers"]

    def wait_serving(self, version: str | None, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            found = [w for w in self.workers_view() if w["worker"] == "inference@test"]
            if found and found[0]["model_version"] == version:
                return found[0]
            assert time.monotonic() < deadline, found
            time.sleep(0.1)

    def caption(self, image: bytes) -> dict:
        return self.client.wait_for(self.client.submit(image)["id"], timeout=60)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    redis.Redis.from_url(REDIS_URL).flushdb()
    logs = tmp_path_factory.mktemp("training-logs")
    with moto_s3_server() as endpoint, fresh_postgres() as database_url, receiver() as sink:
        upgrade(database_url)
        settings = Settings(
            data_dir=tmp_path_factory.mktemp("training"), database_url=database_url,
            broker_url=REDIS_URL, s3_bucket="training", s3_endpoint_url=endpoint,
            s3_region=REGION, s3_access_key=ACCESS_KEY, s3_secret_key=SECRET_KEY,
            batch_max_size=4, sweep_interval_s=1.0, model_poll_s=0.3, training_lease_s=6.0,
            webhook_schedule=(0.0, 0.5, 0.5), webhook_timeout_s=2.0,
        )  # fmt: skip
        open_blob_store(settings).ensure_bucket()
        beat = start_beat(settings, logs / "beat.log")
        stack = Stack(settings, None, sink, logs, {})
        try:
            for queue in ("training", "inference", "webhooks"):
                stack.start(queue)
            wait_ready(stack.workers["training"], logs / "training.log")
            wait_ready(stack.workers["webhooks"], logs / "webhooks.log")
            with api_server(settings) as url:
                stack.client = Client(url)
                yield stack
        finally:
            stop([beat, *stack.workers.values()])


@pytest.fixture(scope="module")
def image(shapes_dir) -> bytes:
    return sorted((shapes_dir / "images" / "val").glob("*.png"))[0].read_bytes()


@pytest.fixture(scope="module")
def first_run(stack) -> tuple[dict, list[dict]]:
    """A run from scratch on the shapes set, if_better, with every webhook event: (run, seen)."""
    hook = stack.receiver.script("/run")
    run = stack.train(hyperparameters=QUICK | {"epochs": 12, "patience": 12},
                      promotion={"policy": "if_better", "metric": "bleu4"}, webhook=hook,
                      webhook_events=["start", "progress", "completed"])  # fmt: skip
    seen: list[dict] = []

    def ended(state: dict) -> bool:
        seen.append(state)
        return state["status"] in ("succeeded", "failed", "canceled")

    return stack.wait_run(run["id"], ended, timeout=600), seen


def test_an_inference_worker_waits_for_the_first_promoted_model(stack):
    waiting = stack.wait_serving(None)  # it reports that it serves nothing yet
    assert waiting["refused"] is None
    assert READY_MARK not in (stack.logs / "inference.log").read_text(errors="replace")
    assert stack.client.request("GET", "/v1/models") == {"active": None, "models": []}


def test_a_run_trains_reports_progress_registers_and_becomes_active(stack, first_run, image):
    run, seen = first_run
    assert run["status"] == "succeeded", run["error"]
    assert (run["model_version"], run["attempts"]) == ("v1", 1)
    assert run["promotion_result"]["promoted"] is True
    assert {"dataset", "features", "training"} <= {s["progress"]["phase"] for s in seen
                                                   if s["progress"]}  # fmt: skip
    steps = [s["progress"] for s in seen if (s["progress"] or {}).get("phase") == "training"]
    assert steps and all(p["loss"] > 0 and p["images_per_s"] > 0 and p["steps_per_s"] > 0
                         and p["eta_s"] >= 0 for p in steps)  # fmt: skip
    assert [row["epoch"] for row in run["history"]] == list(range(1, len(run["history"]) + 1))

    model = stack.client.request("GET", "/v1/models/v1")
    assert model["active"] is True and model["parent"] is None
    assert model["metrics"]["bleu4"] >= BLEU4_FLOOR, model["metrics"]
    assert model["dataset"] == SHAPES and model["training_run_id"] == run["id"]
    assert model["encoder"]["weights"] == "seed:0" and len(model["encoder"]["fingerprint"]) == 16

    wait_ready(stack.workers["inference"], stack.logs / "inference.log")
    assert stack.caption(image)["result"]["model_version"] == "v1"


def test_a_run_announces_start_progress_at_most_every_10_s_and_completion(stack, first_run):
    run, _ = first_run
    deliveries = stack.client.request("GET", f"/v1/training-runs/{run['id']}/deliveries")
    events = [d["event"] for d in deliveries["deliveries"]]
    assert events[0] == "training_run.started" and events[-1] == "training_run.completed"
    assert "training_run.progress" in events
    messages = stack.receiver.wait("/run", len(events), timeout=30)
    bodies = [json.loads(m.body) for m in messages]
    assert bodies[-1]["data"]["status"] == "succeeded"
    assert bodies[-1]["data"]["model_version"] == "v1"
    times = [b["timestamp"] for b in bodies if b["type"] == "training_run.progress"]
    moments = [time.mktime(time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S")) for t in times]
    assert all(b - a >= 9 for a, b in zip(moments, moments[1:], strict=False)), times


@pytest.fixture(scope="module")
def imported(stack, first_run, trained_bundle) -> str:
    """The suite's well-trained bundle, registered through `captioner models import`."""
    done = subprocess.run([sys.executable, "-m", "captioner", "models", "import",
                           str(trained_bundle)], env=os.environ | to_env(stack.settings),
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert "registered" in done.stdout and "v2" in done.stdout, done.stdout + done.stderr
    return "v2"


def test_jobs_during_a_swap_all_succeed_and_later_ones_carry_the_new_version(
    stack, imported, image
):
    submitted: list[tuple[str, float]] = []
    stop_at = threading.Event()

    def submit_steadily() -> None:
        while not stop_at.is_set():
            submitted.append((stack.client.submit(image)["id"], time.monotonic()))
            time.sleep(0.05)

    sender = threading.Thread(target=submit_steadily)
    sender.start()
    try:
        time.sleep(1.0)
        stack.promote(imported)
        worker = stack.wait_serving(imported)
        swapped = time.monotonic()
        time.sleep(1.5)
    finally:
        stop_at.set()
        sender.join()
    jobs = [(stack.client.wait_for(job_id, timeout=60), at) for job_id, at in submitted]
    assert all(job["status"] == "succeeded" for job, _ in jobs), [j["error"] for j, _ in jobs]
    versions = [job["result"]["model_version"] for job, _ in jobs]
    assert set(versions) == {"v1", imported}
    assert all(job["result"]["model_version"] == imported for job, at in jobs if at > swapped)
    assert worker["swap_ms"] > 0 and worker["refused"] is None
    assert max(job["timings"]["total_ms"] for job, _ in jobs) < 15_000


def test_promoting_an_older_version_rolls_back(stack, imported, image):
    stack.promote("v1")
    stack.wait_serving("v1")
    assert stack.caption(image)["result"]["model_version"] == "v1"
    models = stack.client.request("GET", "/v1/models")
    assert models["active"] == "v1"
    stack.promote(imported)
    stack.wait_serving(imported)
    assert stack.caption(image)["result"]["model_version"] == imported


def test_a_bundle_of_another_encoder_is_refused_and_the_old_one_serves_on(
    stack, imported, image, random_bundle, tmp_path
):
    from model.bundle import save_bundle
    from model.encoder import EncoderInfo
    from store.db import Database
    from worker.bundles import import_bundle

    other = replace(random_bundle, encoder=EncoderInfo("seed:9", "0123456789abcdef"))
    path = save_bundle(other, tmp_path / "other-encoder")
    db = Database(stack.settings.database_url)
    try:
        version = import_bundle(db, open_blob_store(stack.settings), path, promote=True)
    finally:
        db.dispose()
    deadline = time.monotonic() + 30
    while not (worker := stack.wait_serving(imported))["refused"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert worker["refused"]["version"] == version
    assert "0123456789abcdef" in worker["refused"]["reason"]
    assert stack.caption(image)["result"]["model_version"] == imported
    stack.promote(imported)


def test_cancel_stops_a_run_at_the_next_step_and_keeps_its_checkpoint(stack, first_run):
    run = stack.train(hyperparameters=QUICK | {"epochs": 500, "patience": 500},
                      promotion="never")  # fmt: skip
    stack.wait_run(run["id"], lambda r: len(r["history"]) >= 1)
    asked = stack.client.get_bytes(f"/v1/training-runs/{run['id']}/cancel", "POST")
    assert json.loads(asked)["cancel_requested"] is True
    asked_at = time.monotonic()
    ended = stack.wait_run(run["id"], lambda r: r["status"] != "running", timeout=60)
    assert ended["status"] == "canceled" and ended["error"]["code"] == "canceled"
    assert time.monotonic() - asked_at < 15
    assert ended["model_version"] is None and len(ended["history"]) < 500
    kept = open_blob_store(stack.settings).list(ended["checkpoint"]["key"])
    assert any(key.endswith("checkpoints/checkpoint") for key in kept), kept
    assert stack.workers["training"].poll() is None  # the worker goes on


def test_a_killed_training_workers_run_resumes_from_its_checkpoint(stack, first_run):
    run = stack.train(hyperparameters=QUICK | {"epochs": 6, "patience": 6}, promotion="never")
    stack.wait_run(run["id"], lambda r: len(r["history"]) >= 2)
    stack.workers["training"].send_signal(signal.SIGKILL)
    stack.workers["training"].wait()
    stack.start("training")
    ended = stack.wait_run(run["id"], lambda r: r["status"] != "running"
                           and r["status"] != "queued", timeout=300)  # fmt: skip
    assert ended["status"] == "succeeded", ended["error"]
    assert ended["attempts"] == 2
    assert ended["progress"]["resumed_from_epoch"] >= 2
    assert [row["epoch"] for row in ended["history"]] == [1, 2, 3, 4, 5, 6]
    model = stack.client.request("GET", f"/v1/models/{ended['model_version']}")
    assert model["active"] is False  # promotion: never


def test_an_uploaded_dataset_fine_tunes_a_base_version(stack, imported, tmp_path):
    folder = write_shapes_dataset(tmp_path / "upload", 60, seed=4, val_fraction=0.25)
    dataset = stack.client.upload_dataset(pack_dataset(folder, tmp_path / "up.zip").read_bytes())
    run = stack.train(dataset={"type": "upload", "id": dataset["id"]}, base_version=imported,
                      hyperparameters=QUICK | {"epochs": 2})  # fmt: skip
    ended = stack.wait_run(run["id"], lambda r: r["status"] not in ("queued", "running"))
    assert ended["status"] == "succeeded", ended["error"]
    model = stack.client.request("GET", f"/v1/models/{ended['model_version']}")
    assert model["parent"] == imported and model["dataset"]["id"] == dataset["id"]
    decision = ended["promotion_result"]  # if_better: judged on the same validation images
    assert decision["active"] is not None and decision["candidate"] is not None
    assert decision["promoted"] == (decision["candidate"] > decision["active"])
    assert model["active"] is decision["promoted"]
