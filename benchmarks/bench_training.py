"""Training throughput, and the time to swap models on a running inference worker.

Prints one JSON object. Run: `python benchmarks/bench_training.py [--n 400] [--swaps 5]
[--batch-sizes 16,64] [--batch-max 8]`.

- training: the shapes set is generated, its features extracted (the encoder-bound phase), then
  `model.training.train` runs a few epochs at each batch size; images/s and steps/s are the
  trainer's own progress figures at the end of the last epoch.
- swap: the embedded service (SQLite, local blobs, filesystem broker) with one inference worker
  serving full-size decoders (vocabulary 5,004, random weights: the swap costs the same as for
  a trained one). Versions are promoted in turn while jobs stream in; for each swap it reports
  the time from the promotion to the worker serving the new version, and the worker's own load
  + compile time; jobs submitted during swaps are compared with the others.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BATCH_SIZES = (16, 64)


def training_throughput(
    folder: Path, n: int, epochs: int, batch_sizes: tuple[int, ...] = BATCH_SIZES
) -> dict:
    """Feature extraction images/s, then training images/s and steps/s per batch size."""
    from model.data import load_dataset
    from model.features import extract_features
    from model.shapes import write_shapes_dataset
    from model.training import Callbacks, TrainConfig, train

    write_shapes_dataset(folder / "shapes", n, seed=0, val_fraction=0.2)
    splits = load_dataset(folder / "shapes")
    encoder = seed0_encoder()
    started = time.perf_counter()
    for role in ("train", "val"):
        extract_features(encoder, splits[role], folder / "features")
    features_per_s = n / (time.perf_counter() - started)
    result = {"images": n, "feature_extraction_images_per_s": round(features_per_s, 1)}
    for batch_size in batch_sizes:
        last = []
        config = TrainConfig(epochs=epochs, batch_size=batch_size, patience=epochs, val_images=50)
        train(
            splits,
            encoder,
            folder / f"bundle-{batch_size}",
            config,
            work_dir=folder / f"work-{batch_size}",
            cache_dir=folder / "features",
            callbacks=Callbacks(progress=last.append),
        )
        final = last[-1]
        result[f"batch_{batch_size}"] = {
            "images_per_s": round(final.images_per_s, 1),
            "steps_per_s": round(final.steps_per_s, 2),
        }
    return result


def random_bundle(path: Path, seed: int) -> Path:
    """A full-size bundle with random weights on the seed:0 encoder."""
    import keras
    import numpy as np

    from model.bundle import Bundle, FeatureNorm, save_bundle
    from model.config import ModelConfig
    from model.encoder import EncoderInfo
    from model.layers import CaptionDecoder
    from model.vocab import SPECIALS, Vocabulary

    keras.utils.set_random_seed(seed)
    vocab = Vocabulary(SPECIALS + tuple(f"w{i}" for i in range(5000)))
    config = ModelConfig(vocab_size=len(vocab))
    norm = FeatureNorm(np.zeros(2048, np.float32), np.ones(2048, np.float32))
    decoder = CaptionDecoder.from_model_config(config)
    info = EncoderInfo("seed:0", seed0_encoder().fingerprint)
    return save_bundle(Bundle(config, vocab, decoder, norm, info), path)


@functools.cache
def seed0_encoder():
    """The seed:0 encoder, built once: training runs on it and each bundle records its
    fingerprint."""
    from model.encoder import Encoder

    return Encoder("seed:0")


def swap_times(
    folder: Path, swaps: int, image: bytes, batch_max: int = 8, pause_s: float = 3.0
) -> dict:
    """Promote two versions in turn under a stream of jobs; time each swap. The worker takes
    batches of up to `batch_max` (it compiles each bucket up to it at every load); `pause_s` of
    steady serving before the first swap and after each."""
    from captioner.keys import local_admin_key
    from captioner.processes import api_server, start_worker, stop, wait_ready
    from captioner.service import migrate
    from captioner_client import Client
    from core.settings import from_env
    from store.blobs import open_blob_store
    from store.db import Database
    from worker.bundles import import_bundle

    settings = from_env(
        {
            "CAPTIONER_DATA_DIR": str(folder / "service"),
            "BATCH_MAX_SIZE": str(batch_max),
            "MODEL_POLL_S": "0.5",
        }
    )
    migrate(settings)
    db, blobs = Database(settings.database_url), open_blob_store(settings)
    versions = [
        import_bundle(db, blobs, random_bundle(folder / f"b{i}", i), promote=i == 0)
        for i in range(2)
    ]
    log = folder / "inference.log"
    worker = start_worker(settings, log, "inference@bench")
    rows, stream = [], JobStream()
    try:
        wait_ready(worker, log)
        with api_server(settings) as url:
            stream.start(Client(url, local_admin_key(settings), timeout=120), image)
            time.sleep(pause_s)
            for i in range(swaps):
                rows.append(one_swap(db, versions[(i + 1) % 2]))
                time.sleep(pause_s)
            jobs = stream.finish()
    finally:
        stop([worker])
        db.dispose()
    return summarize(rows, jobs)


def one_swap(db, version: str) -> dict:
    """Promote `version`; wait until the worker reports serving it."""
    from store import registry

    started = time.perf_counter()
    with db.session() as session:
        registry.promote(session, registry.version_number(version))
    while True:
        with db.session() as session:
            (worker,) = registry.serving_workers(session, 60)
        if worker.model_version == version:
            return {
                "promote_to_serving_s": time.perf_counter() - started,
                "worker_load_and_compile_s": worker.swap_ms / 1000,
                "window": (time.monotonic() - (time.perf_counter() - started), time.monotonic()),
            }
        time.sleep(0.02)


class JobStream:
    """Submits a job every 0.2 s on a thread and remembers when each was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, float]] = []
        self._stop = threading.Event()

    def start(self, client, image: bytes) -> None:
        self.client = client

        def loop() -> None:
            while not self._stop.wait(0.2):
                self.sent.append((client.submit(image).id, time.monotonic()))

        self._thread = threading.Thread(target=loop)
        self._thread.start()

    def finish(self) -> list[tuple[dict, float]]:
        """Stop submitting; each job's JSON once it ended, and when it was sent."""
        self._stop.set()
        self._thread.join()
        return [(self.client.wait(job_id, timeout=120).raw, at) for job_id, at in self.sent]


def summarize(rows: list[dict], jobs: list[tuple[dict, float]]) -> dict:
    """Median swap times, and job latency during swap windows against outside them."""
    windows = [row.pop("window") for row in rows]
    during = [j["timings"]["total_ms"] for j, at in jobs if any(a <= at <= b for a, b in windows)]
    outside = [
        j["timings"]["total_ms"] for j, at in jobs if not any(a <= at <= b for a, b in windows)
    ]
    median = {key: round(statistics.median(r[key] for r in rows), 2) for key in rows[0]}
    return {
        "swaps": len(rows),
        **{f"median_{k}": v for k, v in median.items()},
        "each": [{k: round(v, 2) for k, v in row.items()} for row in rows],
        "jobs": len(jobs),
        "failed_jobs": sum(j["status"] != "succeeded" for j, _ in jobs),
        "job_total_ms_during_swaps": {
            "n": len(during),
            "median": _median(during),
            "max": max(during, default=None),
        },
        "job_total_ms_otherwise": {
            "n": len(outside),
            "median": _median(outside),
            "max": max(outside, default=None),
        },
    }


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="shapes images to train on")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--swaps", type=int, default=5)
    parser.add_argument(
        "--batch-sizes",
        type=lambda text: tuple(int(b) for b in text.split(",")),
        default=BATCH_SIZES,
        help="training batch sizes, e.g. 16,64",
    )
    parser.add_argument("--batch-max", type=int, default=8, help="the worker's BATCH_MAX_SIZE")
    parser.add_argument(
        "--pause-s", type=float, default=3.0, help="steady serving before and after each swap"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        training = training_throughput(folder / "training", args.n, args.epochs, args.batch_sizes)
        image = next((folder / "training" / "shapes" / "images" / "val").glob("*.png")).read_bytes()
        swap = swap_times(folder / "swap", args.swaps, image, args.batch_max, args.pause_s)
    print(
        json.dumps(
            {
                "benchmark": "training",
                "date": datetime.date.today().isoformat(),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "training": training,
                "swap": swap,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
