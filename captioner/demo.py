"""`captioner demo`: the whole job on a fresh machine, with no servers and no internet.

Generates the synthetic shapes set, trains a bundle (or reuses one), starts the pipeline in the
embedded mode (a worker process and the HTTP API), submits held-out images through the API,
and prints each caption beside the true one with its attention picture, then the accuracy.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from captioner.client import Client
from captioner.processes import api_server, start_worker, stop, tail
from captioner.settings import from_env

STEPS = 4


def add_command(commands) -> None:
    """Register `captioner demo`."""
    demo = commands.add_parser("demo", help="generate data, train, run the pipeline, caption")
    demo.add_argument("--data", type=Path, default=Path("data"), help="where everything goes")
    demo.add_argument("--n", type=int, default=1000, help="shapes images (a tenth held out)")
    demo.add_argument("--epochs", type=int, default=12, help="most training epochs")
    demo.add_argument("--patience", type=int, default=3, help="early stopping, in epochs")
    demo.add_argument("--batch-size", type=int, default=32, help="training batch size")
    demo.add_argument("--submit", type=int, default=24, help="held-out images to caption")
    demo.set_defaults(run=run_demo)


def step(number: int, text: str) -> None:
    """One line of progress between the bars."""
    print(f"[{number}/{STEPS}] {text}", file=sys.stderr, flush=True)


def run_demo(args: argparse.Namespace) -> int:
    """Run the four steps; exit status 0 when every submitted image got a caption."""
    started = time.monotonic()
    dataset = ensure_dataset(args.data / "shapes", args.n)
    bundle = ensure_bundle(dataset, args.data / "bundle", args)
    from model.data import load_dataset

    examples = load_dataset(dataset)["val"][: args.submit]
    jobs = caption_through_api(args.data, bundle, examples)
    correct = report(examples, jobs, args.data / "attention")
    share = correct / len(examples)
    print(f"\naccuracy: {correct}/{len(examples)} captions exactly right ({share:.0%}); "
          f"the demo took {time.monotonic() - started:.0f} s")  # fmt: skip
    return 0 if all(job["status"] == "succeeded" for job in jobs) else 1


def ensure_dataset(out: Path, n: int) -> Path:
    """The shapes set under `out`, generated unless already there."""
    from captioner.cli import main

    if (out / "annotations" / "captions_val.json").is_file():
        step(1, f"dataset: reusing {out}")
    else:
        step(1, f"dataset: generating {n} shapes images in {out}")
        if main(["data", "shapes", str(out), "--n", str(n), "--val-fraction", "0.1"]) != 0:
            raise RuntimeError("could not generate the shapes set")
    return out


def ensure_bundle(dataset: Path, out: Path, options: argparse.Namespace) -> Path:
    """A trained bundle at `out`, trained on `dataset` unless already there."""
    from captioner.cli import main

    if (out / "config.json").is_file():
        step(2, f"model: reusing {out} (delete it to train again)")
        return out
    step(2, f"model: training on {dataset} (seeded offline encoder, early stopping)")
    args = ["train", "--data", str(dataset), "--out", str(out), "--epochs", str(options.epochs)]
    args += ["--patience", str(options.patience), "--batch-size", str(options.batch_size)]
    if main(args) != 0:
        raise RuntimeError("training failed")
    return out


def caption_through_api(data: Path, bundle: Path, examples) -> list[dict]:
    """Start a worker and the API (embedded mode), submit the images as a batch, wait."""
    service = data / "service"
    shutil.rmtree(service, ignore_errors=True)  # a fresh queue and database for every demo
    settings = from_env({"CAPTIONER_DATA_DIR": str(service), "MODEL_BUNDLE": str(bundle),
                         "BATCH_MAX_SIZE": "8"})  # fmt: skip
    from captioner.service import migrate

    migrate(settings)
    log = service / "worker.log"
    step(3, f"pipeline: starting a worker (log: {log}) and the API")
    worker = start_worker(settings, log, "demo@%h", gpus="all")
    try:
        with api_server(settings) as url:
            client = Client(url)
            images = [example.path.read_bytes() for example in examples]
            batch = client.submit_batch(images)
            step(4, f"captioning: {len(images)} held-out images sent to {url}/v1/batches")
            wait_for_batch(client, batch["id"], len(images), worker, log)
            return [with_png(client, client.job(job["id"])) for job in batch["jobs"]]
    finally:
        stop([worker])


def wait_for_batch(client: Client, batch_id: str, total: int, worker, log: Path) -> None:
    """Show a progress bar until every job of the batch is terminal."""
    from captioner.cli import progress_bar

    with progress_bar(total, "captioned (the worker loads the model first)", "job") as bar:
        while True:
            batch = client.request("GET", f"/v1/batches/{batch_id}")
            done = total - batch["counts"]["queued"] - batch["counts"]["running"]
            bar.update(done - bar.n)
            if batch["status"] == "completed":
                return
            if worker.poll() is not None:
                raise RuntimeError(f"the worker stopped:\n{tail(log)}")
            time.sleep(0.2)


def with_png(client: Client, job: dict) -> dict:
    """The job with its attention grid under "png" (None unless it succeeded)."""
    url = job["urls"].get("attention_png")
    return job | {"png": client.get_bytes(url) if url else None}


def report(examples, jobs: list[dict], pictures: Path) -> int:
    """Print caption, truth and picture per image; returns how many were exactly right."""
    from model.vocab import standardize

    pictures.mkdir(parents=True, exist_ok=True)
    correct = 0
    for example, job in zip(examples, jobs, strict=True):
        name = example.path.name
        if job["status"] != "succeeded":
            print(f"{name}: {job['status']}: {job['error']}")
            continue
        caption = job["result"]["caption"]
        right = caption.split() in [standardize(c) for c in example.captions]
        correct += right
        picture = pictures / f"{example.path.stem}.png"
        picture.write_bytes(job["png"])
        mark = "✓" if right else f"✗ truth: {example.captions[0]}"
        timing = job["timings"]
        print(f"{name}: {caption}  {mark}  [{picture}]  (batch of {timing['batch_size']}, "
              f"{timing['total_ms']:.0f} ms after submit)")  # fmt: skip
    return correct
