"""File formats every layer agrees on: a dataset folder's layout, a model bundle's files, and the
names of the validation metrics. Each is written here once, so readers and writers cannot drift.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A dataset folder (COCO captions format): annotations/captions_<split>.json for each split, and
# the images of split S in the first of image_folders(S) that exists.
SPLIT_ROLES = ("train", "val", "test")  # a split's role is the first of these its name contains
ANNOTATIONS_GLOB = "annotations/captions_*.json"
ANNOTATIONS_PATTERN = r"annotations/captions_([^/]+)\.json"


def split_role(name: str) -> str | None:
    """'train', 'val' or 'test' for a split name such as val2014 or train_extra; None if none."""
    return next((role for role in SPLIT_ROLES if role in name), None)


def image_folders(split: str) -> tuple[str, ...]:
    """Where a split's images may lie, relative to the dataset root, in the order looked up."""
    return (f"images/{split}", split, "images")


# A model bundle: a folder with these files (model.bundle writes and reads them).
BUNDLE_CONFIG = "config.json"  # sizes, decoder settings and the encoder's identity
BUNDLE_VOCAB = "vocab.json"
BUNDLE_WEIGHTS = "decoder.weights.h5"
BUNDLE_NORMALIZATION = "normalization.npz"  # per-channel mean and std of encoder features
BUNDLE_METRICS = "metrics.json"  # validation scores, per-epoch history, training settings
# Confidence calibration breakpoints and training-feature statistics (model/limits.py); absent
# from bundles made before them, which serve captions without confidence or OOD scores.
BUNDLE_LIMITS = "limits.npz"


@dataclass(frozen=True)
class BundleManifest:
    """What a bundle says about itself, read without TensorFlow."""

    encoder_weights: str
    encoder_fingerprint: str
    metrics: dict[str, Any]
    digest: str  # sha256 of the decoder weights: tells two bundles apart


def read_manifest(bundle_dir: Path) -> BundleManifest:
    """The encoder, metrics and weights digest of a bundle folder."""
    bundle_dir = Path(bundle_dir)
    encoder = json.loads((bundle_dir / BUNDLE_CONFIG).read_text())["encoder"]
    metrics_file = bundle_dir / BUNDLE_METRICS
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return BundleManifest(
        encoder["weights"], encoder["fingerprint"], metrics, weights_digest(bundle_dir)
    )


def weights_digest(bundle_dir: Path) -> str:
    """sha256 of a bundle's decoder weights."""
    return hashlib.sha256((Path(bundle_dir) / BUNDLE_WEIGHTS).read_bytes()).hexdigest()


# Validation metrics, as model.scores computes them and training runs may promote on.
CAPTION_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "cider", "exact_match")


# A caption's limits (issue 29): a bundle's metrics.json may hold "calibration" ({method,
# ece_before, ece_after, images}) and "ood" ({method, threshold, false_alarm_rate, images});
# bundles from before them have neither. A job whose image the OOD score flags carries this
# warning.
OUT_OF_DISTRIBUTION = "out_of_distribution"


def bundle_limits(metrics: dict[str, Any] | None) -> dict[str, float | None]:
    """A version's calibration error (ECE after calibration) and OOD threshold, from its
    metrics.json; None for each a bundle lacks."""
    metrics = metrics or {}
    calibration = metrics.get("calibration") or {}
    ood = metrics.get("ood") or {}
    return {
        "calibration_error": calibration.get("ece_after"),
        "ood_threshold": ood.get("threshold"),
    }
