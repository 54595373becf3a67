"""What a model knows of its own limits, fitted at the end of training and kept in the bundle.

- **Confidence**: the probability that a caption is right (exact match on the synthetic sets).
  The raw confidence exp(caption score), the model's probability of the whole caption, is mapped
  to the exact-match rate of the validation captions by the map (Platt scaling, isotonic
  regression, or none) with the lowest out-of-fold Brier score there; inference interpolates
  between the stored breakpoints.
- **Out-of-distribution score**: the Mahalanobis distance of an image's pooled raw encoder
  features (mean over the 64 cells, (F,)) from the training images', under a Ledoit-Wolf shrunk
  covariance. The threshold is a conformal one: a rank among the distances of images the
  detector has not seen (training images out of fold, and the validation images) chosen so
  that at most 5 % of in-distribution images are flagged, with 90 % probability. Two other
  scores are here for comparison (benchmarks/bench_ood.py): the energy of the decoder's first
  step and the caption's mean per-word negative log-prob.

The fitting uses scikit-learn (training only); serving needs numpy alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from model.vocab import START_ID

FALSE_ALARM_RATE = 0.05  # at most this share of in-distribution images flagged …
FALSE_ALARM_CONFIDENCE = 0.9  # … with this probability over the images the threshold comes from
FOLDS = 5  # for out-of-fold distances and out-of-fold calibration error
OUT_OF_FOLD_IMAGES = 2048  # training images given out-of-fold distances, at most
ECE_BINS = 10


@dataclass(frozen=True)
class OodScore:
    """How unlike the training images an image is: flagged when score > threshold."""

    score: float  # Mahalanobis distance of the pooled encoder features
    threshold: float
    flagged: bool


def calibrate(raw: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Calibrated confidences for raw ones, from a map's breakpoints (held flat beyond them)."""
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
    (xs, ys), calibration = fit_calibration(np.exp(np.asarray(val_scores, np.float64)), val_correct)
    mean, covariance, shrinkage = fit_detector(train_pooled)
    mean, precision = mean.astype(np.float32), np.linalg.inv(covariance).astype(np.float32)
    distances = np.concatenate(
        [out_of_fold_distances(train_pooled), mahalanobis(val_pooled, mean, precision)]
    )
    threshold, rank, guaranteed = conformal_threshold(distances, false_alarm_rate)
    ood = {
        "method": "mahalanobis",
        "threshold": threshold,
        "false_alarm_rate": false_alarm_rate,
        "false_alarm_confidence": FALSE_ALARM_CONFIDENCE if guaranteed else None,
        "expected_false_alarm_rate": 1 - rank / (len(distances) + 1),
        "images": len(train_pooled),
        "threshold_images": len(distances),  # out-of-fold training images and val images
        "shrinkage": shrinkage,
    }
    limits = Limits(xs, ys, mean, precision, threshold)
    return limits, {"calibration": calibration, "ood": ood}


def fit_detector(pooled: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean (F,) and covariance (F, F) of pooled features (N, F) under scikit-learn's Ledoit-Wolf
    estimate (the empirical covariance pulled towards a scaled identity), and the shrinkage."""
    from sklearn.covariance import LedoitWolf

    # store_precision=False: its pseudo-inverse (an eigendecomposition) costs 10× an inverse.
    fitted = LedoitWolf(store_precision=False).fit(np.asarray(pooled, np.float64))
    return fitted.location_, fitted.covariance_, float(fitted.shrinkage_)


def out_of_fold_distances(
    pooled: np.ndarray, folds: int = FOLDS, most: int = OUT_OF_FOLD_IMAGES
) -> np.ndarray:
    """Training images' distances (n,) each under a detector fitted on the other folds: the
    distances of images a detector has not seen, as a new image's is, without spending training
    images on it. At most `most` images (a seeded sample); below 2 per fold, none (0,)."""
    rng = np.random.default_rng(0)
    chosen = np.sort(rng.permutation(len(pooled))[:most])
    if len(chosen) < 2 * folds:
        return np.zeros(0)
    sample = np.asarray(pooled[chosen], np.float64)
    fold = rng.permutation(len(sample)) % folds
    distances = np.empty(len(sample))
    for k in range(folds):
        distances[fold == k] = shrunk_distances(sample[fold != k], sample[fold == k])
    return distances


def shrunk_distances(fitted: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distances (K,) of points (K, F) under the Ledoit-Wolf estimate of `fitted` (M, F). With
    Z the centred samples and G = Z Zᵀ (M, M), the estimate is a ZᵀZ + b I, a = (1 − s) / M,
    b = s μ. Fewer samples than features: in sample space, O(M² F) rather than the O(F³) of an
    (F, F) system, by Woodbury d² = (‖g‖² − a (Zg)ᵀ (b I + a G)⁻¹ Zg) / b for each gap g."""
    m, features = fitted.shape
    mean = fitted.mean(axis=0)
    z, gaps = fitted - mean, points - mean  # (M, F), (K, F)
    gram = z @ z.T  # (M, M)
    mu = np.trace(gram) / (m * features)  # tr(S) / F, S = ZᵀZ / M
    s_norm = np.sum(gram**2) / m**2  # ‖S‖²_F
    gap_to_target = s_norm / features - mu**2  # ‖S − μI‖²_F / F
    noise = (np.sum(np.diag(gram) ** 2) - m * s_norm) / (features * m**2)
    # Ledoit and Wolf (2004); S already a multiple of I: all of it (any shrinkage is the same).
    shrinkage = min(noise, gap_to_target) / gap_to_target if gap_to_target > 0 else 1.0
    a, b = (1 - shrinkage) / m, shrinkage * mu
    if m > features:  # the (F, F) system is the smaller, and b may be 0
        solved = np.linalg.solve(a * z.T @ z + b * np.eye(features), gaps.T)  # (F, K)
        squared = np.sum(gaps.T * solved, axis=0)
    else:
        projected = z @ gaps.T  # (M, K)
        solved = np.linalg.solve(b * np.eye(m) + a * gram, projected)  # (M, K)
        squared = (np.sum(gaps**2, axis=1) - a * np.sum(projected * solved, axis=0)) / b
    return np.sqrt(np.maximum(squared, 0.0))


def conformal_threshold(
    distances: np.ndarray, rate: float, confidence: float = FALSE_ALARM_CONFIDENCE
) -> tuple[float, int, bool]:
    """The k-th smallest of n in-distribution distances, k the least for which a new
    in-distribution image is flagged with probability at most `rate`, with probability
    `confidence` over the n (the coverage of the k-th of n exchangeable scores is
    Beta(k, n + 1 − k): Vovk, 2012). Returns (threshold, k, whether the bound holds); too few
    distances for it: the largest, k = n, False."""
    from scipy import stats

    ordered, n = np.sort(distances), len(distances)
    ranks = np.arange(1, n + 1)
    holds = stats.beta.sf(1 - rate, ranks, n + 1 - ranks) >= confidence
    k = int(ranks[holds][0]) if holds.any() else n
    return float(ordered[k - 1]), k, bool(holds.any())


def fit_calibration(raw: np.ndarray, correct: np.ndarray) -> tuple[tuple[np.ndarray, ...], dict]:
    """The breakpoints of the map, among CALIBRATIONS, whose out-of-fold Brier score on the val
    images' raw confidences (M,) and exact matches (M,) is lowest, refitted on all of them;
    with each map's out-of-fold ECE and Brier score."""
    correct = np.asarray(correct, np.float64)
    folds = min(FOLDS, len(raw) // 2)
    if len(raw) == 0:
        return raw_map(raw, correct), {"method": "raw", "ece_before": None, "images": 0}
    measured = {}
    for name, fit in CALIBRATIONS.items():
        calibrated = out_of_fold(fit, raw, correct, folds)
        measured[name] = {
            "ece": expected_calibration_error(calibrated, correct),
            "brier": float(np.mean((calibrated - correct) ** 2)),
        }
    chosen = min(measured, key=lambda name: measured[name]["brier"])
    metrics = {
        "method": chosen,
        "ece_before": expected_calibration_error(raw, correct),
        "ece_after": measured[chosen]["ece"],
        "images": len(raw),
        "ece_after_measured": HELD_OUT.format(folds) if folds >= 2 else IN_SAMPLE,
        "by_method": measured,
    }
    return CALIBRATIONS[chosen](raw, correct), metrics


def out_of_fold(fit: Any, raw: np.ndarray, correct: np.ndarray, folds: int) -> np.ndarray:
    """Calibrated raw confidences (M,), each by `fit`'s map on the other folds; below 2
    folds, by its map on all of them."""
    if folds < 2:
        return calibrate(raw, *fit(raw, correct))
    fold = np.random.default_rng(0).permutation(len(raw)) % folds
    calibrated = np.empty(len(raw))
    for k in range(folds):
        calibrated[fold == k] = calibrate(raw[fold == k], *fit(raw[fold != k], correct[fold != k]))
    return calibrated


def isotonic_map(raw: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Breakpoints of the non-decreasing least-squares fit of correct on raw (scikit-learn)."""
    from sklearn.isotonic import IsotonicRegression

    fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, correct)
    return fitted.X_thresholds_, fitted.y_thresholds_


def platt_map(raw: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Breakpoints of σ(a · logit(raw) + b), a logistic regression of correct on the raw
    confidence's logit (Platt scaling; a = 1, b = 0 is the raw confidence), on a grid."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(correct)) < 2:  # one class: its rate, everywhere
        return PLATT_GRID, np.full(len(PLATT_GRID), float(np.mean(correct)) if len(correct) else 0)
    fitted = LogisticRegression().fit(logit(raw)[:, None], correct)
    return PLATT_GRID, fitted.predict_proba(logit(PLATT_GRID)[:, None])[:, 1]


def raw_map(raw: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The identity: raw confidences kept when no fitted map beats them out of fold."""
    return PLATT_GRID, PLATT_GRID.copy()


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 − p)), p clipped to [1e-7, 1 − 1e-7]."""
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


PLATT_GRID = 1 / (1 + np.exp(-np.linspace(-16, 16, 321)))  # (321,) raw confidences, by logit
HELD_OUT = "out of fold: {} folds of the val images, each calibrated by a map fitted on the others"
IN_SAMPLE = "on the images the map was fitted on (too few to hold any out)"
CALIBRATIONS = {"raw": raw_map, "platt": platt_map, "isotonic": isotonic_map}
