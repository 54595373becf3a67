"""Both decoders on both synthetic sets: quality, training time and decode speed.

For each set (shapes, scenes) it writes the set once, extracts its features once (cached in
the work folder), then trains a GRU and a Transformer on the same features and scores each on
the validation split with greedy search and beam 3: BLEU-1…4, CIDEr-D, exact match,
localisation. It also times decoding alone (features → captions, compiled with XLA) at batch 1
and 32, the Transformer with and without its key/value cache, against the encoder at batch 32.
Prints one JSON object.

Run: `python benchmarks/bench_decoders.py --work /tmp/bench-decoders [--n 1500] [--epochs 20]
[--sets shapes scenes] [--decoders gru transformer] [--skip-output-bias]`
(`--reuse` scores the bundles an earlier run left there instead of training them again).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from core.formats import BUNDLE_METRICS  # noqa: E402
from model.bundle import load_bundle  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.data import load_dataset  # noqa: E402
from model.encoder import Encoder  # noqa: E402
from model.evaluation import caption_features, score  # noqa: E402
from model.features import extract_features  # noqa: E402
from model.inference import Decoding  # noqa: E402
from model.scenes import write_scenes_dataset  # noqa: E402
from model.shapes import write_shapes_dataset  # noqa: E402
from model.training import TrainConfig, train  # noqa: E402

SETS = {"shapes": write_shapes_dataset, "scenes": write_scenes_dataset}
# The Transformer with its default single head (README: The model), at the learning rate its
# post-norm blocks train stably with.
ARCHITECTURES = {
    "gru": (ModelConfig(decoder="gru"), {"learning_rate": 1e-3}),
    "transformer": (ModelConfig(decoder="transformer", heads=1), {"learning_rate": 5e-4}),
}


def median_s(fn, reps: int) -> float:
    """Median seconds of `fn()` over `reps` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decode_speed(bundle, features: np.ndarray, reps: int) -> dict:
    """Images/s of greedy decoding alone at batch 1 and 32 (the Transformer also uncached)."""
    out = {}
    caches = (True, False) if bundle.config.decoder == "transformer" else (True,)
    for cache in caches:
        bundle.decoder.cache = cache
        decoding = Decoding(bundle)  # a fresh trace: `cache` is read when tracing
        for batch in (1, 32):
            chunk = features[:batch]
            seconds = median_s(lambda d=decoding, chunk=chunk: d.search(chunk), reps)
            out[f"{'' if cache else 'uncached_'}greedy_b{batch}_img_s"] = round(batch / seconds, 1)
            out[f"{'' if cache else 'uncached_'}greedy_b{batch}_ms"] = round(seconds * 1000, 2)
    bundle.decoder.cache = True
    return out


def scores(bundle, examples, features) -> dict:
    """Validation scores with greedy search and beam 3."""
    decoding = Decoding(bundle)
    out = {}
    for beam in (1, 3):
        found = score(examples, caption_features(decoding, features, beam))
        out[f"beam{beam}"] = {k: None if v is None else round(v, 4) for k, v in found.items()}
    return out


def run_set(name: str, args, encoder: Encoder) -> dict:
    """Write the set, cache its features, train and score both decoders."""
    data = args.work / name
    if not (data / "annotations").is_dir():
        SETS[name](data, args.n, args.seed, 0.2)
    splits = load_dataset(data)
    cache = args.work / f"{name}.features"
    val = splits["val"]
    val_features = extract_features(encoder, val, cache)
    rows = {}
    for arch in args.decoders:
        model_config, hyper = ARCHITECTURES[arch]
        config = TrainConfig(epochs=args.epochs, patience=args.patience, seed=args.seed, **hyper)
        out = args.work / f"{name}-{arch}"
        if args.reuse and (out / BUNDLE_METRICS).is_file():  # trained by an earlier run
            bundle = load_bundle(out)
        else:
            bundle = train(splits, encoder, out, config, model_config, cache_dir=cache)
        rows[arch] = {
            "fit_s": bundle.metrics["fit_seconds"],  # training alone: features were cached
            "best_epoch": bundle.metrics["best_epoch"],
            "first_epoch_loss": round(bundle.metrics["history"][0]["loss"], 4),
            **scores(bundle, val, val_features),
            **decode_speed(bundle, np.asarray(val_features[:32], np.float32), args.reps),
        }
    print(json.dumps({name: rows}), file=sys.stderr, flush=True)  # kept if a later part fails
    out = {"images": args.n, "val_images": len(val), **rows}
    if not args.skip_output_bias:
        out["output_bias"] = bias_effect(name, splits, encoder, cache, args)
    return out


def bias_effect(name: str, splits, encoder: Encoder, cache: Path, args) -> dict:
    """The first epoch's mean training loss, the output bias at 0 vs at log word frequencies."""
    losses = {}
    for arch in args.decoders:
        model_config, hyper = ARCHITECTURES[arch]
        for bias in (False, True):
            config = TrainConfig(epochs=1, seed=args.seed, output_bias=bias, val_images=50, **hyper)
            folder = args.work / f"{name}-bias-{arch}-{bias}"
            shutil.rmtree(folder.with_name(folder.name + ".work"), ignore_errors=True)  # no resume
            bundle = train(splits, encoder, folder, config, model_config, cache_dir=cache)
            losses[f"{arch}_{'frequencies' if bias else 'zero'}"] = round(
                bundle.metrics["history"][0]["loss"], 4
            )
    return losses


def encoder_speed(encoder: Encoder, reps: int) -> dict:
    """The encoder's time at batch 32 (what a decode is measured against)."""
    images = np.random.default_rng(0).uniform(-1, 1, (32, 299, 299, 3)).astype(np.float32)
    seconds = median_s(lambda: encoder(images).numpy(), reps)
    return {"encoder_b32_ms": round(seconds * 1000, 1), "encoder_b32_img_s": round(32 / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="data, features and bundles")
    parser.add_argument("--n", type=int, default=1500, help="images per set")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--patience", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument(
        "--decoders", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES)
    )
    parser.add_argument(
        "--skip-output-bias",
        action="store_true",
        help="leave out the output bias's effect (two 1-epoch trainings per decoder and set)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="score the bundles an earlier run left in --work, not retrain them",
    )
    args = parser.parse_args()
    encoder = Encoder("seed:0")
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": datetime.date.today().isoformat(),
        "load_before": os.getloadavg(),
        **encoder_speed(encoder, min(3, args.reps)),
        **{name: run_set(name, args, encoder) for name in args.sets},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
