"""How well a model knows its limits: out-of-distribution scores and calibrated confidence.

1. A shapes model trained by the CLI (`captioner data shapes`, `captioner train`). Held-out
   shapes images (another seed) against real photographs and logos (the ones scikit-image
   ships: nothing is downloaded): AUROC of three scores (the bundle's Mahalanobis distance of
   pooled encoder features, the energy of the decoder's first step, the caption's mean
   per-word surprise), and the share of each set the bundle's threshold flags. The harder
   scenes set is scored too, as near-out-of-distribution for a shapes model.
2. A scenes model per decoder, trained by the CLI: the expected calibration error of the raw
   confidence exp(caption log-prob) and of the calibrated `confidence`, on held-out scenes
   images (another seed than the training set and its validation split).
3. The cost: the added work per batch of 32 (confidence and OOD score) against the encoder's.

Prints one JSON object. Run: `python benchmarks/bench_ood.py --work /tmp/bench-ood [--size 600]
[--epochs 6] [--scenes-size 1000] [--scenes-epochs 12] [--held-out 500]
[--decoders gru transformer]`
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from captioner.cli import main as captioner  # noqa: E402
from model.bundle import load_bundle  # noqa: E402
from model.data import load_dataset  # noqa: E402
from model.encoder import Encoder  # noqa: E402
from model.images import decode_image  # noqa: E402
from model.inference import Decoding, with_limits  # noqa: E402
from model.limits import caption_surprise, expected_calibration_error, first_step_energy  # noqa: E402
from model.scenes import write_scenes_dataset  # noqa: E402
from model.scores import exact_match  # noqa: E402
from model.shapes import write_shapes_dataset  # noqa: E402

HELD_OUT_SEED = 12345  # as the demo's: apart from the training set's seed 0
BATCH = 32
SCORES = ("mahalanobis", "energy", "surprise")  # higher: less like the training images
# scikit-image's sample photographs and logos (skimage.data), each as RGB.
PHOTOS = (
    "astronaut", "brick", "camera", "cat", "chelsea", "coffee", "coins", "colorwheel", "grass",
    "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page",
    "retina", "rocket", "text",
)  # fmt: skip


def photos() -> np.ndarray:
    """scikit-image's photographs and logos, preprocessed: (N, 299, 299, 3)."""
    from PIL import Image
    from skimage import data

    images = []
    for name in PHOTOS:
        pixels = getattr(data, name)()
        if pixels.dtype == bool:  # horse: a silhouette
            pixels = pixels.astype(np.uint8) * 255
        out = io.BytesIO()
        Image.fromarray(pixels).convert("RGB").save(out, format="PNG")
        images.append(decode_image(out.getvalue()))
    return np.stack(images)


def folder_images(folder: Path, split: str = "val") -> tuple[np.ndarray, list]:
    """A COCO-format folder's split, preprocessed (N, 299, 299, 3), with its examples."""
    examples = load_dataset(folder)[split]
    return np.stack([decode_image(e.path.read_bytes()) for e in examples]), examples


class Scorer:
    """A bundle on its encoder: every score of every image, in batches."""

    def __init__(self, bundle_dir: Path) -> None:
        self.bundle = load_bundle(bundle_dir)
        self.encoder = Encoder(self.bundle.encoder.weights)
        self.decoding = Decoding(self.bundle)

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Per image: mahalanobis, energy, surprise, flagged, raw and calibrated confidence."""
        starts = range(0, len(images), BATCH)
        parts = [self.batch(images[start : start + BATCH]) for start in starts]
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

    def batch(self, images: np.ndarray) -> dict[str, np.ndarray]:
        features = self.encoder(images)  # (B, 64, 2048)
        results = with_limits(
            self.decoding.caption_features(features), features, self.bundle.limits
        )
        norm = self.bundle.norm
        standardised = (features - norm.mean) / norm.std
        return {
            "mahalanobis": np.array([r.ood.score for r in results]),
            "flagged": np.array([r.ood.flagged for r in results]),
            "energy": first_step_energy(self.bundle.decoder, standardised),
            "surprise": caption_surprise(results),
            "raw": np.exp([r.score for r in results]),
            "confidence": np.array([r.confidence for r in results]),
            "text": np.array([r.text for r in results], dtype=object),
        }


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an outside image scores above an inside one), ties counted half (Mann-Whitney)."""
    above = (outside[:, None] > inside[None, :]).mean()
    ties = (outside[:, None] == inside[None, :]).mean()
    return float(above + ties / 2)


def train(kind: str, folder: Path, size: int, epochs: int, decoder: str, out: Path) -> Path:
    """Write the set and train on it with the CLI (the decoder's default settings); what the
    CLI prints goes to stderr, so that stdout holds only the report."""
    with contextlib.redirect_stdout(sys.stderr):
        if not (folder / "annotations").is_dir():
            assert captioner(["data", kind, str(folder), "--size", str(size)]) == 0
        if not (out / "config.json").is_file():
            command = ["train", "--data", str(folder), "--out", str(out), "--epochs", str(epochs)]
            assert captioner([*command, "--decoder", decoder]) == 0
    return out


def separation(args: argparse.Namespace) -> dict:
    """Part 1: a shapes model against photos and against the scenes set."""
    work = args.work
    bundle = train("shapes", work / "shapes", args.size, args.epochs, "gru", work / "shapes-gru")
    scorer = Scorer(bundle)
    write_shapes_dataset(work / "held-out", args.held_out, HELD_OUT_SEED, val_fraction=1.0)
    write_scenes_dataset(work / "scenes-near", args.held_out, HELD_OUT_SEED, val_fraction=1.0)
    inside = scorer(folder_images(work / "held-out")[0])
    outside = {"photos": scorer(photos()), "scenes": scorer(folder_images(work / "scenes-near")[0])}
    recorded = json.loads((bundle / "metrics.json").read_text())["ood"]
    report = {"threshold": scorer.bundle.limits.threshold, "held_out_shapes": args.held_out}
    report["threshold_images"] = recorded["threshold_images"]
    report["expected_false_alarm_rate"] = recorded["expected_false_alarm_rate"]
    report["held_out_flagged"] = float(inside["flagged"].mean())
    for name, scores in outside.items():
        report[name] = {
            "images": len(scores["flagged"]),
            "flagged": float(scores["flagged"].mean()),
            "auroc": {k: auroc(inside[k], scores[k]) for k in SCORES},
        }
    report["photo_captions"] = dict(zip(PHOTOS[:4], outside["photos"]["text"][:4], strict=True))
    report["cost"] = cost(scorer)
    return report


def calibration(args: argparse.Namespace, decoder: str) -> dict:
    """Part 2: a scenes model's confidence on held-out scenes, before and after calibration."""
    work = args.work
    bundle = train(
        "scenes", work / "scenes", args.scenes_size, args.scenes_epochs, decoder,
        work / f"scenes-{decoder}",
    )  # fmt: skip
    held_out = work / "scenes-held-out"
    if not (held_out / "annotations").is_dir():
        write_scenes_dataset(held_out, args.held_out, HELD_OUT_SEED, val_fraction=1.0)
    images, examples = folder_images(held_out)
    scores = Scorer(bundle)(images)
    texts = scores["text"]
    correct = np.array([exact_match(e.captions, t) for e, t in zip(examples, texts, strict=True)])
    return {
        "images": len(correct),
        "exact_match": float(correct.mean()),
        "ece_before": expected_calibration_error(scores["raw"], correct),
        "ece_after": expected_calibration_error(scores["confidence"], correct),
        "ece_noise_floor": noise_floor(scores["confidence"]),
        "recorded_in_bundle": json.loads((bundle / "metrics.json").read_text())["calibration"],
    }


def noise_floor(confidence: np.ndarray, draws: int = 1000) -> float:
    """The ECE these confidences would show were they exactly right: the mean over draws of
    outcomes each true with its image's confidence. An ECE near it is as low as this many
    images can measure."""
    rng = np.random.default_rng(0)
    outcomes = rng.uniform(size=(draws, len(confidence))) < confidence
    return float(np.mean([expected_calibration_error(confidence, drawn) for drawn in outcomes]))


def cost(scorer: Scorer, reps: int = 5) -> dict:
    """Part 3: milliseconds per batch of 32 of the encoder and of the added work."""
    images = np.random.default_rng(0).uniform(-1, 1, (BATCH, 299, 299, 3)).astype(np.float32)
    features = scorer.encoder(images)
    results = scorer.decoding.caption_features(features)
    encoder_ms, added_ms = [], []
    for _ in range(reps):
        started = time.perf_counter()
        scorer.encoder(images).numpy()
        encoder_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        with_limits(results, features, scorer.bundle.limits)
        added_ms.append((time.perf_counter() - started) * 1000)
    encoder, added = float(np.median(encoder_ms)), float(np.median(added_ms))
    return {"encoder_b32_ms": encoder, "limits_b32_ms": added, "share_of_encoder": added / encoder}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-ood"))
    parser.add_argument("--size", type=int, default=600, help="shapes images to train on")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--scenes-size", type=int, default=1000)
    parser.add_argument("--scenes-epochs", type=int, default=12)
    parser.add_argument("--held-out", type=int, default=500, help="held-out images per set")
    parser.add_argument("--decoders", nargs="+", default=["gru", "transformer"])
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "shapes_model": separation(args),
        "calibration_on_held_out_scenes": {d: calibration(args, d) for d in args.decoders},
    }
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
