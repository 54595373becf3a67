"""A caption's limits (issue 29): the calibration maps and their choice, the Ledoit-Wolf
Mahalanobis OOD score and its conformal threshold, bundles with and without them, and the CLI's
output."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from captioner.cli import format_caption, main
from captioner.limits import PHOTO
from model.bundle import Bundle, load_bundle, save_bundle
from model.inference import Captioner, CaptionResult, OodScore
from model.limits import (
    Limits,
    calibrate,
    caption_surprise,
    conformal_threshold,
    expected_calibration_error,
    first_step_energy,
    fit_calibration,
    fit_detector,
    fit_limits,
    isotonic_map,
    mahalanobis,
    out_of_fold_distances,
    platt_map,
    shrunk_distances,
)

ROOT = Path(__file__).resolve().parents[1]


def test_isotonic_map_pools_adjacent_violators():
    xs, ys = isotonic_map(np.array([0.4, 0.1, 0.2, 0.3]), np.array([1.0, 1, 0, 1]))
    # Sorted by x the labels are 1 0 1 1: the first two pool to 0.5.
    assert np.allclose(calibrate(np.array([0.1, 0.2, 0.3, 0.4]), xs, ys), [0.5, 0.5, 1, 1])


def test_expected_calibration_error_by_hand():
    confidence = np.array([0.05, 0.15, 0.12, 0.95, 1.0])
    correct = np.array([0, 1, 0, 1, 1])
    # bins: [0, 0.1): 0.05 vs 0 → 0.05, 1 image; [0.1, 0.2): 0.135 vs 0.5 → 0.365, 2 images;
    # [0.9, 1.0]: 0.975 vs 1 → 0.025, 2 images
    expected = (1 * 0.05 + 2 * 0.365 + 2 * 0.025) / 5
    assert expected_calibration_error(confidence, correct) == pytest.approx(expected)


def overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw confidences (n,) and outcomes (n,) right far less often than said: P(right) = raw³."""
    rng = np.random.default_rng(seed)
    raw = rng.uniform(0, 1, n)
    return raw, (rng.uniform(0, 1, n) < raw**3).astype(float)


@pytest.mark.parametrize("fit", [isotonic_map, platt_map])
def test_each_map_is_monotone_and_helps_on_held_out_images(fit):
    raw, correct = overconfident(4000, 0)
    xs, ys = fit(raw[:2000], correct[:2000])
    assert np.all(np.diff(xs) > 0) and np.all(np.diff(ys) >= 0)
    calibrated = calibrate(raw[2000:], xs, ys)
    before = expected_calibration_error(raw[2000:], correct[2000:])
    after = expected_calibration_error(calibrated, correct[2000:])
    assert before > 0.15 and after < 0.04


def test_calibration_keeps_the_map_that_predicts_best_out_of_fold():
    raw, correct = overconfident(300, 1)
    (xs, ys), metrics = fit_calibration(raw, correct)
    folds = metrics["by_method"]
    assert set(folds) == {"raw", "platt", "isotonic"}
    chosen = metrics["method"]
    assert folds[chosen]["brier"] == min(f["brier"] for f in folds.values())
    assert chosen != "raw" and metrics["ece_after"] == folds[chosen]["ece"]
    # Measured out of fold, the error after is what a new image would see: check on new ones.
    new_raw, new_correct = overconfident(4000, 2)
    assert metrics["ece_before"] > 0.15
    assert expected_calibration_error(calibrate(new_raw, xs, ys), new_correct) < 0.06
    # Already calibrated, one class, too few: it still gives a map, never a crash.
    assert fit_calibration(np.array([0.3, 0.8]), np.array([0.0, 0.0]))[1]["images"] == 2
    assert fit_calibration(np.zeros(0), np.zeros(0))[1]["images"] == 0


def test_the_ledoit_wolf_estimate_matches_the_textbook_formula_and_its_sample_space_form():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 5)) * [1, 2, 3, 0.5, 1]
    mean, covariance, shrinkage = fit_detector(x)
    centred = x - x.mean(0)
    s = centred.T @ centred / len(x)
    mu = np.trace(s) / 5
    delta = np.linalg.norm(s - mu * np.eye(5), "fro") ** 2 / 5
    beta = sum(np.linalg.norm(np.outer(c, c) - s, "fro") ** 2 for c in centred) / len(x) ** 2 / 5
    expected = min(beta, delta) / delta
    assert 0 < shrinkage < 1 and shrinkage == pytest.approx(expected)
    assert np.allclose(covariance, expected * mu * np.eye(5) + (1 - expected) * s)
    precision = np.linalg.inv(covariance)
    points = rng.normal(size=(3, 5))
    direct = [np.sqrt((p - mean) @ precision @ (p - mean)) for p in points]
    assert np.allclose(mahalanobis(points, mean, precision), direct, rtol=1e-4)
    # The folds' distances, computed through the (M, M) Gram matrix, with more features than
    # samples (as 2,048 features of a few hundred images are):
    wide = rng.normal(size=(30, 80)) * rng.uniform(0.5, 3, 80)
    mean, covariance, _ = fit_detector(wide)
    points = rng.normal(size=(4, 80))
    direct = mahalanobis(points, mean, np.linalg.inv(covariance))
    assert np.allclose(shrunk_distances(wide, points), direct, rtol=1e-4)
    # and with more samples than features, in feature space:
    mean, covariance, _ = fit_detector(x)
    direct = mahalanobis(points[:, :5], mean, np.linalg.inv(covariance))
    assert np.allclose(shrunk_distances(x, points[:, :5]), direct, rtol=1e-4)


def test_out_of_fold_distances_are_those_of_unseen_images():
    rng = np.random.default_rng(3)
    scales = 1 / np.arange(1, 301)  # (300,) a few directions hold most of the spread
    x = rng.normal(size=(200, 300)) * scales
    distances = out_of_fold_distances(x)
    mean, covariance, _ = fit_detector(x)
    seen = mahalanobis(x, mean, np.linalg.inv(covariance))
    unseen = mahalanobis(rng.normal(size=(200, 300)) * scales, mean, np.linalg.inv(covariance))
    # Seen images sit far closer than new ones; out of fold, they sit as far as new ones.
    assert np.median(seen) < 0.8 * np.median(unseen)
    assert np.median(distances) == pytest.approx(np.median(unseen), rel=0.1)
    assert len(out_of_fold_distances(x, most=50)) == 50 and len(out_of_fold_distances(x[:9])) == 0


def test_the_conformal_threshold_holds_its_false_alarm_rate_nine_times_in_ten():
    """Checked against the normal distribution's own tail: for calibration sets of 200 normal
    scores, the share of new scores above the threshold is at most 5 % in ≥ 90 % of the sets."""
    from scipy import stats

    rng = np.random.default_rng(4)
    rates = []
    for _ in range(2000):
        threshold, rank, holds = conformal_threshold(rng.normal(size=200), 0.05)
        rates.append(stats.norm.sf(threshold))
    rates = np.array(rates)
    assert holds and rank > 0.95 * 200
    assert 0.9 <= np.mean(rates <= 0.05) <= 0.95  # as promised, and not far more cautious
    # The plain 95th percentile keeps its promise only about half the time.
    plain = [stats.norm.sf(np.quantile(rng.normal(size=200), 0.95)) for _ in range(2000)]
    assert np.mean(np.array(plain) <= 0.05) < 0.7
    # Too few scores for the bound: the largest, said so.
    assert conformal_threshold(np.arange(10.0), 0.05) == (9.0, 10, False)


def test_fit_limits_flags_few_new_images_and_records_its_metrics():
    rng = np.random.default_rng(2)
    train, val = rng.normal(size=(300, 16)), rng.normal(size=(200, 16))
    scores = np.log(rng.uniform(0.2, 1, 200))
    limits, metrics = fit_limits(train, val, scores, rng.uniform(size=200) < 0.7)
    new = rng.normal(size=(5000, 16))
    assert 0.01 < np.mean([o.flagged for o in limits.ood(new)]) <= 0.05
    assert all(o.flagged for o in limits.ood(val + 10))
    assert metrics["calibration"]["method"] in ("raw", "platt", "isotonic")
    assert metrics["calibration"]["images"] == 200
    assert metrics["ood"] == metrics["ood"] | {
        "method": "mahalanobis",
        "false_alarm_rate": 0.05,
        "false_alarm_confidence": 0.9,
        "images": 300,
        "threshold_images": 500,  # 300 out of fold and 200 val
        "threshold": limits.threshold,
    }
    assert metrics["ood"]["expected_false_alarm_rate"] < 0.05
    json.dumps(metrics)  # it goes into metrics.json


def small_limits(features: int = 2048) -> Limits:
    """Limits with an identity precision around zero, for plumbing tests."""
    return Limits(
        np.array([0.0, 0.5, 1.0]),
        np.array([0.1, 0.2, 0.9]),
        np.zeros(features, np.float32),
        np.eye(features, dtype=np.float32),
        threshold=1.0,
    )


def test_a_bundle_from_before_limits_loads_serves_none_and_says_why_once(
    random_bundle_dir, encoder, images, caplog
):
    with caplog.at_level(logging.INFO, logger="model.bundle"):
        bundle = load_bundle(random_bundle_dir)
    said = [r.getMessage() for r in caplog.records if r.name == "model.bundle"]
    assert len(said) == 1 and "no confidence calibration or OOD statistics" in said[0]
    assert bundle.limits is None
    results = Captioner(bundle, encoder).caption_batch(images[:2])
    assert [(r.confidence, r.ood) for r in results] == [(None, None)] * 2
    line = json.loads(format_caption(Path("a.png"), results[0], None, True))
    assert line["confidence"] is None and line["ood"] is None


def test_a_bundle_with_limits_round_trips_and_scores_every_caption(
    random_bundle: Bundle, encoder, images, tmp_path
):
    bundle = replace(random_bundle, limits=small_limits())
    loaded = load_bundle(save_bundle(bundle, tmp_path / "bundle"))
    for name in ("calibration_x", "calibration_y", "mean", "precision"):
        assert np.array_equal(getattr(loaded.limits, name), getattr(bundle.limits, name))
    assert loaded.limits.threshold == 1.0
    results = Captioner(loaded, encoder).caption_batch(images[:2])
    for result in results:
        assert result.confidence == pytest.approx(
            np.interp(np.exp(result.score), [0, 0.5, 1], [0.1, 0.2, 0.9])
        )
        assert result.ood.threshold == 1.0 and result.ood.flagged == (result.ood.score > 1.0)


def test_the_caption_line_shows_confidence_and_warns_when_flagged():
    result = CaptionResult(
        "a red circle", ["a", "red", "circle"], [-0.1] * 3, np.zeros((3, 64)), True, -0.1
    )
    flagged = replace(result, confidence=0.25, ood=OodScore(812.4, 95.2, True))
    line = format_caption(Path("photo.jpg"), flagged, None, False)
    assert line == (
        "photo.jpg: a red circle  (confidence 25%)  "
        "⚠ out of distribution: unlike the training images (score 812 > threshold 95)"
    )
    quiet = replace(flagged, ood=OodScore(12.0, 95.2, False))
    assert format_caption(Path("s.png"), quiet, None, False).endswith("(confidence 25%)")
    line = json.loads(format_caption(Path("photo.jpg"), flagged, None, True))
    assert line["confidence"] == 0.25
    assert line["ood"] == {"score": 812.4, "threshold": 95.2, "flagged": True}


@pytest.mark.slow
def test_the_trained_bundle_flags_a_photo_and_few_new_shapes_images(
    trained_bundle, tmp_path, capsys
):
    from model.shapes import write_shapes_dataset

    metrics = json.loads((trained_bundle / "metrics.json").read_text())
    assert set(metrics["calibration"]) >= {"method", "ece_before", "ece_after", "images"}
    assert metrics["ood"]["false_alarm_rate"] == 0.05
    write_shapes_dataset(tmp_path / "new", 8, seed=4321, val_fraction=1.0)
    shapes = sorted((tmp_path / "new" / "images" / "val").glob("*.png"))
    photo = ROOT / "captioner" / PHOTO
    assert main(["caption", str(trained_bundle), str(photo), *map(str, shapes), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    ood = [line["ood"] for line in lines]
    assert ood[0]["flagged"] and ood[0]["score"] > 3 * max(o["score"] for o in ood[1:])
    # At most 1 in 20 new shapes images is flagged, nine times in ten: most pass.
    assert sum(o["flagged"] for o in ood[1:]) <= 1
    assert all(0 <= line["confidence"] <= 1 for line in lines)


def test_the_other_ood_scores_give_one_finite_number_per_image(any_bundle, encoder, images):
    features = encoder(images[:2])  # (2, 64, 2048)
    standardised = (features - any_bundle.norm.mean) / any_bundle.norm.std
    energy = first_step_energy(any_bundle.decoder, standardised)
    results = Captioner(any_bundle, encoder).caption_batch(images[:2])
    surprise = caption_surprise(results)
    assert energy.shape == surprise.shape == (2,)
    assert np.all(np.isfinite(energy)) and np.all(surprise >= 0)
