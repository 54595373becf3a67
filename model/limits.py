"""What a model knows of its own limits, fitted at the end of training and kept in the bundle.

- **Confidence**: the probability that a caption is right (exact match on the synthetic sets).
  The raw confidence exp(caption score), the model's probability of the whole caption, is mapped
  to the exact-match rate observed on the validation split by isotonic regression (pool adjacent
  violators); inference interpolates between the stored breakpoints.
- **Out-of-distribution score**: the Mahalanobis distance of an image's pooled raw encoder
  features (mean over the 64 cells, (F,)) from the training images', under a Ledoit-Wolf shrunk
  covariance; an image is flagged above the (1 − false alarm rate) quantile of the validation
  images' distances. Two other scores are here for comparison (benchmarks/bench_ood.py):
  the energy of the decoder's first step and the caption's mean per-word negative log-prob.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from model.vocab import START_ID

FALSE_ALARM_RATE = 0.05  # share of in-distribution (val) images flagged
ECE_BINS = 10


@dataclass(frozen=True)
class OodScore:
    """How unlike the training images an image is: flagged when score > threshold."""

    score: float  # Mahalanobis distance of the pooled encoder features
    threshold: float
    flagged: bool


def isotonic_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Breakpoints (xs, ys), xs increasing, of the least-squares non-decreasing fit of y on x
    (pool adjacent violators); np.interp(x, xs, ys) evaluates it."""
    order = np.argsort(x, kind="stable")
    xs, first = np.unique(np.asarray(x, np.float64)[order], return_index=True)
    weights = np.diff(np.append(first, len(order))).astype(np.float64)  # ties pooled first
    means = np.add.reduceat(np.asarray(y, np.float64)[order], first) / weights
    blocks: list[list[float]] = []  # [mean, weight, first x index, last x index]
    for i, (mean, weight) in enumerate(zip(means, weights, strict=True)):
        blocks.append([mean, weight, i, i])
        while len(blocks) > 1 and blocks[-2][0] >= blocks[-1][0]:  # a violator: pool the two
            m2, w2, _, last = blocks.pop()
            m1, w1, start, _ = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, start, last])
    # Each block is flat between its first and last x; np.interp joins the blocks linearly.
    ends = sorted({int(i) for block in blocks for i in block[2:]})
    values = np.empty(len(xs))
    for mean, _, start, last in blocks:
        values[int(start) : int(last) + 1] = mean
    return xs[ends], values[ends]


def calibrate(raw: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Calibrated confidences for raw ones, from isotonic breakpoints (held flat beyond them)."""
    return np.clip(np.interp(raw, xs, ys), 0.0, 1.0)


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
) -> float:
    """Σ over equal-width confidence bins of (share of images) × |mean confidence − accuracy|."""
    confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, np.float64)
    index = np.minimum((confidence * bins).astype(int), bins - 1)  # 1.0 goes in the last bin
    error = 0.0
    for b in np.unique(index):
        inside = index == b
        error += inside.mean() * abs(confidence[inside].mean() - correct[inside].mean())
    return float(error)


def ledoit_wolf(x: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean (F,), shrunk covariance (F, F) and shrinkage of samples x (N, F): the empirical
    covariance pulled towards a scaled identity by the Ledoit-Wolf (2004) optimal amount."""
    n, p = x.shape
    mean = x.mean(axis=0, dtype=np.float64)
    empirical, fourth = np.zeros((p, p)), 0.0  # Σ x xᵀ and Σ ‖x‖⁴ of the centred samples
    for start in range(0, n, chunk):  # in chunks: a COCO-sized x in float64 would not fit
        centred = np.asarray(x[start : start + chunk], np.float64) - mean
        empirical += centred.T @ centred
        fourth += np.sum(np.sum(centred**2, axis=1) ** 2)
    empirical /= n
    mu = np.trace(empirical) / p
    target_gap = (np.sum(empirical**2) - 2 * mu * np.trace(empirical) + p * mu**2) / p
    # Σ_k ‖x_k x_kᵀ − S‖²_F = Σ_k ‖x_k‖⁴ − n ‖S‖²_F: the sampling noise of S.
    noise = (fourth - n * np.sum(empirical**2)) / (p * n**2)
    shrinkage = 0.0 if target_gap == 0 else min(noise, target_gap) / target_gap
    covariance = (1 - shrinkage) * empirical + shrinkage * mu * np.eye(p)
    return mean, covariance, float(shrinkage)


def pooled_features(features: Any, chunk: int = 256) -> np.ndarray:
    """Raw encoder features (N, L, F), maybe a float16 memmap, averaged over cells: (N, F)."""
    parts = [
        np.asarray(features[start : start + chunk], np.float32).mean(axis=1)
        for start in range(0, len(features), chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, features.shape[-1]), np.float32)


def mahalanobis(pooled: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Distances (N,) of pooled features (N, F) from `mean` under `precision` (F, F)."""
    gap = np.asarray(pooled, np.float32) - mean  # (N, F)
    return np.sqrt(np.maximum(np.einsum("nf,nf->n", gap @ precision, gap), 0.0))


def caption_surprise(results: Sequence[Any]) -> np.ndarray:
    """Mean negative log-probability per word of each caption, <end> included (N,): a second
    OOD score, free at inference."""
    return np.array([-r.score / max(len(r.log_probs) + r.ended, 1) for r in results])


def first_step_energy(decoder: Any, standardised: tf.Tensor) -> np.ndarray:
    """Energy −logsumexp(logits) of the decoder's first word given standardised features
    (B, L, F): (B,), higher for images unlike the training ones (Liu et al., 2020)."""
    batch = standardised.shape[0]
    memory = decoder.encode(standardised)
    state = decoder.initial_state(batch, 1)
    start = tf.fill([batch], START_ID)
    logits, _, _ = decoder.step(start, memory, state, tf.constant(0))  # (B, V)
    return -tf.reduce_logsumexp(logits, axis=-1).numpy().astype(np.float64)


@dataclass(frozen=True)
class Limits:
    """A bundle's confidence calibration and the statistics of its training images' features."""

    calibration_x: np.ndarray  # (K,) raw confidences exp(caption score), increasing
    calibration_y: np.ndarray  # (K,) exact-match rate observed at each, non-decreasing
    mean: np.ndarray  # (F,) float32: pooled raw features of the training images
    precision: np.ndarray  # (F, F) float32: inverse of their Ledoit-Wolf covariance
    threshold: float  # Mahalanobis distances above this are flagged

    def confidence(self, scores: np.ndarray) -> np.ndarray:
        """Probability right (N,) of captions with these log-probabilities (N,)."""
        return calibrate(
            np.exp(np.asarray(scores, np.float64)), self.calibration_x, self.calibration_y
        )

    def ood(self, pooled: np.ndarray) -> list[OodScore]:
        """The OOD score of each image's pooled raw features (N, F)."""
        distances = mahalanobis(pooled, self.mean, self.precision)
        return [OodScore(float(d), self.threshold, bool(d > self.threshold)) for d in distances]

    def save(self, path: Path) -> None:
        """Write the arrays to one .npz file."""
        arrays = {k: getattr(self, k) for k in ("calibration_x", "calibration_y", "mean")}
        np.savez(path, **arrays, precision=self.precision, threshold=np.float64(self.threshold))

    @classmethod
    def load(cls, path: Path) -> Limits:
        """Read a file written by `save`."""
        with np.load(path) as stored:
            arrays = {key: stored[key] for key in stored.files}
        return cls(**{**arrays, "threshold": float(arrays["threshold"])})


def fit_limits(
    train_pooled: np.ndarray,
    val_pooled: np.ndarray,
    val_scores: np.ndarray,
    val_correct: np.ndarray,
    false_alarm_rate: float = FALSE_ALARM_RATE,
) -> tuple[Limits, dict[str, dict]]:
    """Limits from pooled training features (N, F), the validation images' pooled features
    (M, F), caption log-probabilities (M,) and exact matches (M,); with the metrics to record."""
    raw = np.exp(np.asarray(val_scores, np.float64))
    correct = np.asarray(val_correct, np.float64)
    xs, ys = isotonic_fit(raw, correct)
    mean, covariance, shrinkage = ledoit_wolf(train_pooled)
    precision = np.linalg.inv(covariance)  # positive definite: shrunk towards the identity
    mean, precision = mean.astype(np.float32), precision.astype(np.float32)
    distances = mahalanobis(val_pooled, mean, precision)
    threshold = float(np.quantile(distances, 1 - false_alarm_rate))
    limits = Limits(xs, ys, mean, precision, threshold)
    after, measured = held_out_ece(raw, correct)
    metrics = {
        "calibration": {
            "method": "isotonic",
            "ece_before": expected_calibration_error(raw, correct),
            "ece_after": after,
            "images": len(raw),
            "ece_after_measured": measured,
        },
        "ood": {
            "method": "mahalanobis",
            "threshold": threshold,
            "false_alarm_rate": false_alarm_rate,
            "images": len(train_pooled),
            "threshold_images": len(distances),
            "shrinkage": shrinkage,
        },
    }
    return limits, metrics


def held_out_ece(raw: np.ndarray, correct: np.ndarray) -> tuple[float, str]:
    """ECE after calibration, each half of the images calibrated by a map fitted on the other
    (the stored map is fitted on all); below 4 images, on the images it was fitted on."""
    if len(raw) < 4:
        return expected_calibration_error(calibrate(raw, *isotonic_fit(raw, correct)), correct), (
            "on the images the map was fitted on (too few to hold any out)"
        )
    halves = np.arange(len(raw)) % 2 == 0
    calibrated = np.empty(len(raw))
    for fit, apply in ((halves, ~halves), (~halves, halves)):
        calibrated[apply] = calibrate(raw[apply], *isotonic_fit(raw[fit], correct[fit]))
    measured = "out of fold: each half of the val images calibrated by a map fitted on the other"
    return expected_calibration_error(calibrated, correct), measured
