"""`captioner demo`: the whole job on a fresh machine, with no servers and no internet.

Starts the service in the embedded mode (the HTTP API, a training worker and an inference
worker), trains a model through the API on the built-in synthetic shapes set, waits for it with
a progress bar, and, once the inference worker serves the new version, captions freshly drawn
shapes images through the API and prints each caption beside the true one with its attention
picture, then the accuracy; last, it captions a photo, unlike any shapes image, to show the
out-of-distribution warning beside its caption.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from captioner.banner import shown
from captioner.keys import KEY_FILE, local_admin_key
from captioner.limits import demo_photo, limit_notes
from captioner.options import renamed
from captioner.processes import api_server, start_worker, stop, tail
from captioner.progress import TrainingBars, progress_bar
from core.settings import from_env

if TYPE_CHECKING:
    from captioner_client import Client, Job, TrainingRun

STEPS = 5
KEPT = ("datasets", "features")  # reused by the next demo: the shapes set and its features
HELD_OUT_SEED = 12345  # the images to caption are drawn apart from the training set
CLIENT_TIMEOUT_S = 120.0
RUN_POLL_S = 0.5
RUN_TIMEOUT_S = 3600.0


def add_command(commands) -> None:
    """Register `captioner demo`."""
    demo = commands.add_parser("demo", help="train through the API, then caption through it")
    demo.add_argument("--data", type=Path, default=Path("data"), help="where everything goes")
    demo.add_argument("--size", type=int, default=1000, help="shapes images (a fifth held out)")
    renamed(demo, "--n", "--size")
    demo.add_argument("--epochs", type=int, default=12, help="most training epochs")
    demo.add_argument("--patience", type=int, default=3, help="early stopping, in epochs")
    demo.add_argument("--batch-size", type=int, default=32, help="training batch size")
    demo.add_argument("--submit", type=int, default=24, help="new images to caption")
    demo.set_defaults(run=run_demo)


def step(number: int, text: str) -> None:
    """One line of progress between the bars."""
    print(f"[{number}/{STEPS}] {text}", file=sys.stderr, flush=True)


def run_demo(args: argparse.Namespace) -> int:
    """Run the four steps; exit status 0 when every submitted image got a caption."""
    Client = light_client()
    started = time.monotonic()
    service = fresh_service(args.data / "service")
    settings = from_env(
        {"CAPTIONER_DATA_DIR": str(service), "BATCH_MAX_SIZE": "8", "MODEL_POLL_S": "0.5"}
    )
    from captioner.service import migrate

    migrate(settings)
    key = local_admin_key(settings)
    step(
        1,
        f"service: starting the API, a training and an inference worker (logs: {service}; "
        f"admin API key: {settings.data_dir / KEY_FILE})",
    )
    with ExitStack() as stack:
        workers = {
            queue: start_worker(settings, service / f"{queue}.log", f"{queue}@%h", queue)
            for queue in ("training", "inference")
        }
        stack.callback(stop, list(workers.values()))
        url = stack.enter_context(api_server(settings))
        client = stack.enter_context(Client(url, key, timeout=CLIENT_TIMEOUT_S))
        run = train_through_api(client, args, workers["training"], service / "training.log")
        version = run.model_version
        wait_for_version(client, version, workers["inference"], service / "inference.log")
        examples = held_out(args.data / "held-out", args.submit)
        jobs = caption_through_api(
            client, examples, workers["inference"], service / "inference.log"
        )
        photo = caption_photo(client)
    correct = report(examples, jobs, args.data / "attention")
    share = correct / len(examples)
    print(
        f"\naccuracy: {correct}/{len(examples)} captions exactly right ({share:.0%}) by model "
        f"{version}; the demo took {time.monotonic() - started:.0f} s"
    )
    print(f"\n{photo_line(photo)}")
    print(use_it_now(args.data, settings.data_dir / KEY_FILE))
    return 0 if all(job.status == "succeeded" for job, _ in jobs) else 1


def use_it_now(data: Path, key_file: Path) -> str:
    """The demo's last lines: the one command that serves its model and key, and where they are."""
    make = "make up" if data == Path("data") else f"make up DATA={data}"
    key = shown(key_file)
    return (
        f"\nuse it now: `{make}` serves this model until Ctrl-C (the same as "
        f"`CAPTIONER_DATA_DIR={data / 'service'} captioner up`):\n"
        f"  the page  http://127.0.0.1:8000/  (paste the key; /training trains more)\n"
        f"  API key   {key}  (export CAPTIONER_API_KEY=$(cat {key}))\n"
        f"  then      captioner submit {data / 'held-out' / 'images' / 'val' / '000000.png'} --wait"
    )


def light_client() -> type[Client]:
    """The light client's Client (client/, `captioner_client`: `make install` and the image
    install it beside the service), imported only here: the rest of the CLI works without it."""
    try:
        from captioner_client import Client
    except ModuleNotFoundError as exc:
        if exc.name not in ("captioner_client", "httpx"):
            raise
        raise RuntimeError(
            "the demo talks to the API through the light client: pip install ./client"
        ) from None
    return Client


def fresh_service(folder: Path) -> Path:
    """An empty service folder (database, blobs, queue), keeping the reusable caches."""
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name not in KEPT:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def train_through_api(client: Client, args: argparse.Namespace, worker, log: Path) -> TrainingRun:
    """POST /v1/training-runs on the shapes set, promoted when done; follow it to its end."""
    run = client.start_run(
        {"type": "shapes", "size": args.size, "seed": 0},
        hyperparameters={
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "patience": args.patience,
        },
        promotion={"policy": "always", "metric": "bleu4"},
    )
    step(2, f"training: run {run.id} on {args.size} shapes images (seeded offline encoder)")
    with RunBars() as bars:
        run = follow_run(client, run.id, lambda r: bars.show(r, worker, log))
    if run.status != "succeeded":
        raise RuntimeError(f"training run {run.status}: {run.raw['error']}\n{tail(log)}")
    scores = run.history[-1]
    print(
        f"model {run.model_version} registered and promoted; last epoch: bleu4 "
        f"{scores['bleu4']:.3f}, exact match {scores['exact_match']:.0%}",
        file=sys.stderr,
    )
    return run


def follow_run(client: Client, run_id: str, seen) -> TrainingRun:
    """Read the run every RUN_POLL_S until it ends, passing each reading to `seen` (which
    raises if a worker died)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        run = client.run(run_id)
        seen(run)
        if run.done:
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"training run {run_id} is still {run.status}")
        time.sleep(RUN_POLL_S)


class RunBars:
    """Progress bars for a run's phases (dataset, features, epochs) and a line per epoch."""

    def __init__(self) -> None:
        self.bars = TrainingBars()
        self.epochs_shown = 0

    def __enter__(self) -> RunBars:
        return self

    def __exit__(self, *exc) -> None:
        self.bars.__exit__(*exc)

    def show(self, run: TrainingRun, worker, log: Path) -> None:
        """Update the bars from one GET of the run."""
        if worker.poll() is not None:
            raise RuntimeError(f"the training worker stopped:\n{tail(log)}")
        for row in run.history[self.epochs_shown :]:
            self.bars.epoch_end(row)
            self.epochs_shown += 1
        progress = run.progress or {}
        phase = progress.get("phase")
        if phase in ("dataset", "features"):
            self.bars.features(
                progress.get("split", "dataset"), progress["done"], progress["total"]
            )
        elif phase == "training" and progress["epoch"] > self.epochs_shown:
            self.bars.progress(SimpleNamespace(**progress))


def wait_for_version(client: Client, version: str, worker, log: Path) -> None:
    """Wait until the inference worker serves `version` (it loads the model first)."""
    step(3, f"rollout: the inference worker loads {version}")
    while True:
        workers = client.request("GET", "/v1/workers")["workers"]
        if any(w["model_version"] == version for w in workers):
            return
        if worker.poll() is not None:
            raise RuntimeError(f"the inference worker stopped:\n{tail(log)}")
        time.sleep(0.2)


def held_out(folder: Path, n: int):
    """`n` new shapes images, drawn with another seed than the training set."""
    from model.data import load_dataset
    from model.shapes import write_shapes_dataset

    if not (folder / "annotations" / "captions_val.json").is_file():
        write_shapes_dataset(folder, n, HELD_OUT_SEED, val_fraction=1.0)
    return load_dataset(folder)["val"][:n]


def caption_through_api(
    client: Client, examples, worker, log: Path
) -> list[tuple[Job, bytes | None]]:
    """Submit the images as one batch and wait for every job: each with its attention grid."""
    images = [example.path.read_bytes() for example in examples]
    batch = client.submit_batch(images)
    step(4, f"captioning: {len(images)} new images sent to {client.base_url}/v1/batches")
    wait_for_batch(client, batch.id, len(images), worker, log)
    return [with_png(client, client.job(job)) for job in batch.jobs]


def wait_for_batch(client: Client, batch_id: str, total: int, worker, log: Path) -> None:
    """Show a progress bar until every job of the batch is terminal."""
    with progress_bar(total, "captioned", "job") as bar:
        while True:
            batch = client.batch(batch_id)
            done = total - batch.counts["queued"] - batch.counts["running"]
            bar.update(done - bar.n)
            if batch.done:
                return
            if worker.poll() is not None:
                raise RuntimeError(f"the worker stopped:\n{tail(log)}")
            time.sleep(0.2)


def with_png(client: Client, job: Job) -> tuple[Job, bytes | None]:
    """The job and its attention grid as a PNG (None unless it succeeded)."""
    return job, client.attention_png(job) if job.raw["urls"].get("attention_png") else None


def report(examples, jobs: list[tuple[Job, bytes | None]], pictures: Path) -> int:
    """Print caption, truth and picture per image; returns how many were exactly right."""
    from model.vocab import standardize

    pictures.mkdir(parents=True, exist_ok=True)
    correct = 0
    for example, (job, png) in zip(examples, jobs, strict=True):
        name = example.path.name
        if job.status != "succeeded":
            print(f"{name}: {job.status}: {job.raw['error']}")
            continue
        caption = job.caption.caption
        right = caption.split() in [standardize(c) for c in example.captions]
        correct += right
        picture = pictures / f"{example.path.stem}.png"
        picture.write_bytes(png)
        mark = "✓" if right else f"✗ truth: {example.captions[0]}"
        timing = job.raw["timings"]
        print(
            f"{name}: {caption}  {mark}  [{picture}]  (batch of {timing['batch_size']}, "
            f"{timing['total_ms']:.0f} ms after submit)"
        )
    return correct


def caption_photo(client: Client) -> Job:
    """Caption the package's photo (captioner/photos) through the API and wait for it."""
    step(5, "a photo, unlike the shapes the model learned from: is it flagged?")
    return client.wait(client.submit(demo_photo()), timeout=CLIENT_TIMEOUT_S)


def photo_line(job: Job) -> str:
    """The photo's caption with its confidence and the out-of-distribution warning; read from
    the job's JSON, so a service without OOD scores prints the caption alone."""
    if job.status != "succeeded":
        return f"photo (astronaut.jpg): {job.status}: {job.raw.get('error')}"
    result = job.raw.get("result") or {}
    notes = limit_notes(result.get("confidence"), result.get("ood"))
    return f"photo (astronaut.jpg): {result.get('caption', '')}{notes}"
