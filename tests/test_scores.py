"""Tests for caption metrics and attention localisation."""

from __future__ import annotations

import numpy as np
import pytest

from model.scores import caption_scores, localization, localization_scores, region_mask
from model.shapes import ShapeObject

KEYS = {"bleu1", "bleu2", "bleu3", "bleu4", "cider", "exact_match"}
REFERENCES = {
    "1": ["a red circle left of a blue square"],
    "2": ["a green triangle above a yellow circle"],
    "3": ["a purple square left of a purple circle"],
}


def test_identical_captions_score_perfectly(capsys) -> None:
    predictions = {key: refs[0] for key, refs in REFERENCES.items()}
    scores = caption_scores(REFERENCES, predictions)
    assert set(scores) == KEYS
    assert all(type(value) is float for value in scores.values())
    assert scores["bleu4"] == pytest.approx(1.0)
    assert scores["bleu1"] == pytest.approx(1.0)
    assert scores["exact_match"] == 1.0
    assert scores["cider"] > 0
    assert capsys.readouterr().out == ""


def test_standardisation_before_scoring(capsys) -> None:
    predictions = {key: refs[0].upper() + "." for key, refs in REFERENCES.items()}
    scores = caption_scores(REFERENCES, predictions)
    assert scores["bleu4"] == pytest.approx(1.0)
    assert scores["exact_match"] == 1.0
    assert capsys.readouterr().out == ""


def test_changed_captions_score_lower(capsys) -> None:
    perfect = caption_scores(REFERENCES, {key: refs[0] for key, refs in REFERENCES.items()})
    predictions = {
        "1": "a red circle above a blue square",
        "2": "a green triangle above a yellow circle",
        "3": "a purple circle left of a purple square",
    }
    scores = caption_scores(REFERENCES, predictions)
    assert scores["exact_match"] == pytest.approx(1 / 3)
    for key in ("bleu1", "bleu2", "bleu3", "bleu4", "cider"):
        assert 0.0 <= scores[key] < perfect[key]
    assert scores["bleu4"] < scores["bleu1"]
    assert capsys.readouterr().out == ""


def test_exact_match_against_any_reference() -> None:
    references = {"a": ["one thing", "a red circle"], "b": ["x y z"]}
    scores = caption_scores(references, {"a": "A red circle", "b": "x y"})
    assert scores["exact_match"] == 0.5


def test_missing_references_or_predictions() -> None:
    with pytest.raises(KeyError):
        caption_scores(REFERENCES, {"9": "a red circle"})
    with pytest.raises(ValueError):
        caption_scores(REFERENCES, {})


def test_region_mask_known_boxes() -> None:
    # 80 x 80 image, 8 x 8 grid: cells are 10 px squares.
    mask = region_mask((12, 25, 10, 10), (80, 80))
    assert mask.shape == (64,) and mask.dtype == bool
    expected = np.zeros((8, 8), dtype=bool)
    expected[2:4, 1:3] = True  # x 12..22 -> cols 1, 2; y 25..35 -> rows 2, 3
    assert np.array_equal(mask.reshape(8, 8), expected)
    # Edges that only touch a cell do not count.
    assert np.flatnonzero(region_mask((10, 10, 10, 10), (80, 80))).tolist() == [9]
    assert region_mask((0, 0, 80, 80), (80, 80)).all()


def test_region_mask_non_square_image_is_row_major() -> None:
    mask = region_mask((150, 0, 10, 10), (160, 80), grid=4)  # cells 40 x 20
    assert np.flatnonzero(mask).tolist() == [3]  # row 0, last column
    mask = region_mask((0, 70, 10, 10), (160, 80), grid=4)
    assert np.flatnonzero(mask).tolist() == [12]  # last row, column 0


OBJECTS = [
    ShapeObject("red", "circle", (0.0, 0.0, 100.0, 100.0)),  # cells rows 0-2, cols 0-2 at 299 px
    ShapeObject("blue", "square", (200.0, 200.0, 80.0, 80.0)),
]
SIZE = (299, 299)


def _attention_on(words: list[str], targets: list[np.ndarray]) -> np.ndarray:
    """(T, 64) attention with each word's mass spread over its target mask."""
    attention = np.zeros((len(words), 64))
    for row, target in zip(attention, targets, strict=True):
        row[target] = 1.0 / target.sum()
    return attention


def test_localization_all_inside_and_all_outside() -> None:
    words = "a red circle left of a blue square".split()
    inside = [region_mask(OBJECTS[0].bbox, SIZE)] * 3 + [region_mask(OBJECTS[1].bbox, SIZE)] * 5
    scores = localization_scores(words, _attention_on(words, inside), OBJECTS, SIZE)
    assert scores == pytest.approx([1.0] * 4)  # red, circle, blue, square; others skipped
    outside = [~mask for mask in inside]
    scores = localization_scores(words, _attention_on(words, outside), OBJECTS, SIZE)
    assert scores == pytest.approx([0.0] * 4)


def test_localization_accepts_json_objects_and_partial_mass() -> None:
    objects = [{"color": o.color, "shape": o.shape, "bbox": list(o.bbox)} for o in OBJECTS]
    words = ["blue", "square"]
    attention = np.full((2, 64), 1 / 64)
    expected = region_mask(OBJECTS[1].bbox, SIZE).sum() / 64
    assert localization_scores(words, attention, objects, SIZE) == pytest.approx([expected] * 2)


def test_localization_skips_wrongly_named_phrases() -> None:
    words = "a green circle left of a blue square".split()  # no green circle in the scene
    attention = np.full((len(words), 64), 1 / 64)
    scores = localization_scores(words, attention, OBJECTS, SIZE)
    assert len(scores) == 2  # only "blue" and "square"
    truncated = "a red circle left of a blue".split()  # phrase 1 has no shape word
    attention = np.full((len(truncated), 64), 1 / 64)
    assert len(localization_scores(truncated, attention, OBJECTS, SIZE)) == 2
    assert localization_scores(["a", "<end>"], np.ones((2, 64)) / 64, OBJECTS, SIZE) == []


def test_localization_duplicates_use_phrase_index() -> None:
    objects = [OBJECTS[0], ShapeObject("red", "circle", (200.0, 200.0, 80.0, 80.0))]
    words = "a red circle above a red circle".split()
    second = region_mask(objects[1].bbox, SIZE)
    attention = _attention_on(words, [second] * len(words))
    assert localization_scores(words, attention, objects, SIZE) == pytest.approx([0, 0, 1, 1])


def test_localization_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        localization_scores(["red"], np.ones((2, 64)), OBJECTS, SIZE)


def test_localization_mean() -> None:
    assert localization([[1.0, 0.0], [], [0.5]]) == pytest.approx(0.5)
    assert localization([[], []]) is None
    assert localization([]) is None
