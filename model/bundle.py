"""Model bundles: a directory with config, vocabulary, decoder weights, normalisation, metrics."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import BundleError, EncoderMismatch
from core.formats import (
    BUNDLE_CONFIG,
    BUNDLE_LIMITS,
    BUNDLE_METRICS,
    BUNDLE_NORMALIZATION,
    BUNDLE_VOCAB,
    BUNDLE_WEIGHTS,
)
from model.config import ModelConfig
from model.decoders import Decoder, build_decoder
from model.encoder import EncoderInfo
from model.limits import Limits
from model.vocab import Vocabulary

FORMAT = 2  # 2: the model settings name their decoder architecture
READS = (1, 2)  # format 1 is 2 with the GRU decoder, the only one there was

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureNorm:
    """Per-channel standardisation of encoder features, fitted on the training features."""

    mean: np.ndarray  # (F,) float32
    std: np.ndarray  # (F,) float32

    @classmethod
    def fit(cls, features: np.ndarray, chunk: int = 256) -> FeatureNorm:
        """Mean and std per channel over all images and locations of features (N, L, F)."""
        total = np.zeros(features.shape[-1])
        squares = np.zeros(features.shape[-1])
        for start in range(0, len(features), chunk):  # chunked: features may be a memmap
            part = np.asarray(features[start : start + chunk], dtype=np.float64)
            total += part.sum(axis=(0, 1))
            squares += np.square(part).sum(axis=(0, 1))
        count = features.shape[0] * features.shape[1]
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
        # Channels that never fire keep a unit scale instead of dividing by zero.
        return cls(mean.astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32))


@dataclass
class Bundle:
    """Everything needed to caption with a trained decoder on a matching encoder."""

    config: ModelConfig
    vocab: Vocabulary
    decoder: Decoder
    norm: FeatureNorm
    encoder: EncoderInfo
    metrics: dict[str, Any] = field(default_factory=dict)
    limits: Limits | None = None  # None in bundles made before confidence and OOD scores

    def check_encoder(self, encoder: EncoderInfo) -> None:
        """Raise EncoderMismatch unless `encoder` has the fingerprint this bundle was trained on."""
        if encoder.fingerprint != self.encoder.fingerprint:
            raise EncoderMismatch(
                f"bundle was trained on encoder {self.encoder.fingerprint} "
                f"({self.encoder.weights}); this encoder is {encoder.fingerprint} "
                f"({encoder.weights})"
            )


def save_bundle(bundle: Bundle, path: Path) -> Path:
    """Write a bundle directory atomically (built beside it, then renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    config = {
        "format": FORMAT,
        "model": bundle.config.to_dict(),
        "encoder": {"weights": bundle.encoder.weights, "fingerprint": bundle.encoder.fingerprint},
    }
    (staging / BUNDLE_CONFIG).write_text(json.dumps(config, indent=2))
    bundle.vocab.save(staging / BUNDLE_VOCAB)
    bundle.decoder.save_weights(staging / BUNDLE_WEIGHTS)
    np.savez(staging / BUNDLE_NORMALIZATION, mean=bundle.norm.mean, std=bundle.norm.std)
    (staging / BUNDLE_METRICS).write_text(json.dumps(bundle.metrics, indent=2))
    if bundle.limits is not None:
        bundle.limits.save(staging / BUNDLE_LIMITS)
    if path.exists():
        shutil.rmtree(path)
    staging.rename(path)
    return path


def load_bundle(path: Path) -> Bundle:
    """Read a bundle directory written by `save_bundle`, or raise BundleError."""
    path = Path(path)
    required = (BUNDLE_CONFIG, BUNDLE_VOCAB, BUNDLE_WEIGHTS, BUNDLE_NORMALIZATION)
    missing = [name for name in required if not (path / name).is_file()]
    if missing:
        raise BundleError(f"{path} is not a model bundle: missing {', '.join(missing)}")
    config = json.loads((path / BUNDLE_CONFIG).read_text())
    if config.get("format") not in READS:
        raise BundleError(
            f"bundle format {config.get('format')} is not one this version reads "
            f"({', '.join(map(str, READS))}): a bundle made by a newer captioner?"
        )
    model_config = ModelConfig.from_dict(config["model"])
    decoder = build_decoder(model_config)
    decoder.load_weights(path / BUNDLE_WEIGHTS)
    stats = np.load(path / BUNDLE_NORMALIZATION)
    metrics_file = path / BUNDLE_METRICS
    return Bundle(
        config=model_config,
        vocab=Vocabulary.load(path / BUNDLE_VOCAB),
        decoder=decoder,
        norm=FeatureNorm(stats["mean"], stats["std"]),
        encoder=EncoderInfo(**config["encoder"]),
        metrics=json.loads(metrics_file.read_text()) if metrics_file.is_file() else {},
        limits=load_limits(path),
    )


def load_limits(path: Path) -> Limits | None:
    """A bundle's limits, or None (said once in the log) for a bundle made before them."""
    if (path / BUNDLE_LIMITS).is_file():
        return Limits.load(path / BUNDLE_LIMITS)
    # INFO: the workers' logs show it; `captioner caption` keeps stderr for errors.
    log.info(
        "bundle %s has no confidence calibration or OOD statistics (made before they "
        "existed): captions carry none",
        path,
    )
    return None
