"""Tests for the synthetic scenes set (two groups of shapes) and its attention localisation."""

from __future__ import annotations

import json
import re
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.data import load_dataset
from model.scenes import Group, SceneObject, captions_for, render_scene, write_scenes_dataset
from model.scores import localization_scores, region_mask
from model.shapes import COLORS, ShapeObject

SIZE = (299, 299)
# count, size, colour, noun, plural "s": the groups of one phrase.
_PHRASE = (
    r"(a|two|three)(?: (small|large))?(?: (red|green|blue|yellow|purple))?"
    r" (circle|square|triangle)(s?)"
)
CAPTION = re.compile(rf"^{_PHRASE} (left of|right of|above|below) {_PHRASE}$")
COUNTS = {"a": 1, "two": 2, "three": 3}
SIDES = {"small": (28, 40), "large": (64, 84)}


@pytest.fixture(scope="module")
def scenes() -> list[tuple[Image.Image, list[str], list[SceneObject]]]:
    rng = np.random.default_rng(5)
    return [render_scene(rng) for _ in range(60)]


def _group(objects: list[SceneObject], index: int) -> list[SceneObject]:
    return [obj for obj in objects if obj.group == index]


def _relation(first: list[SceneObject], second: list[SceneObject]) -> set[str]:
    """Relations under which every object of `first` is on that side of every one of `second`."""

    def holds(a: SceneObject, b: SceneObject, relation: str) -> bool:
        (ax, ay, aw, ah), (bx, by, bw, bh) = a.bbox, b.bbox
        return {
            "left of": ax + aw + 10 <= bx,
            "right of": bx + bw + 10 <= ax,
            "above": ay + ah + 10 <= by,
            "below": by + bh + 10 <= ay,
        }[relation]

    relations = ("left of", "right of", "above", "below")
    return {r for r in relations if all(holds(a, b, r) for a in first for b in second)}


def _named_group(phrase: tuple[str, ...], objects: list[SceneObject]) -> int:
    """The one group whose attributes agree with every word the phrase has."""
    count, size, color, shape, plural = phrase
    assert (plural == "s") == (count != "a")
    matches = [
        g
        for g in (0, 1)
        if all(
            word in (None, getattr(_group(objects, g)[0], key))
            for key, word in (("size", size), ("color", color), ("shape", shape))
        )
    ]
    assert len(matches) == 1, phrase
    assert len(_group(objects, matches[0])) == COUNTS[count]
    return matches[0]


def test_captions_match_grammar_and_objects(scenes) -> None:
    relations = set()
    for _, captions, objects in scenes:
        assert len(captions) == 3 and len(set(captions)) == 3
        for caption in captions:
            match = CAPTION.match(caption)
            assert match, caption
            words = match.groups()
            first, second = _named_group(words[:5], objects), _named_group(words[6:], objects)
            assert first != second
            assert _relation(_group(objects, first), _group(objects, second)) == {words[5]}
            relations.add(words[5])
    assert relations == {"left of", "right of", "above", "below"}


def test_reference_rule(scenes) -> None:
    for _, (canonical, inverse, short), objects in scenes:
        a, b = _group(objects, 0)[0], _group(objects, 1)[0]
        parts = [CAPTION.match(c).groups() for c in (canonical, inverse, short)]
        assert all(None not in p[:5] + p[6:] for p in parts[:2])  # all words in 0 and 1
        assert parts[0][2:4] == parts[1][8:10] == (a.color, a.shape)
        assert parts[0][8:10] == parts[1][2:4] == (b.color, b.shape)
        only_size = (a.color, a.shape) == (b.color, b.shape)
        dropped = (2, 8) if only_size else (1, 7)  # colour words, else size words
        assert parts[2][dropped[0]] is None and parts[2][dropped[1]] is None
        expected = list(parts[0])
        expected[dropped[0]] = expected[dropped[1]] = None
        assert parts[2] == tuple(expected)


def test_reference_rule_examples() -> None:
    red, blue = Group(2, "small", "red", "circle"), Group(1, "large", "blue", "square")
    assert captions_for([red, blue], "above") == [
        "two small red circles above a large blue square",
        "a large blue square below two small red circles",
        "two red circles above a blue square",
    ]
    small, large = Group(3, "small", "red", "circle"), Group(1, "large", "red", "circle")
    assert captions_for([small, large], "left of") == [
        "three small red circles left of a large red circle",
        "a large red circle right of three small red circles",
        "three small circles left of a large circle",  # size alone tells them apart
    ]


def test_groups_sizes_and_layout(scenes) -> None:
    counts = set()
    for image, _, objects in scenes:
        assert image.mode == "RGB" and image.size == SIZE
        assert len(objects) in (3, 4)
        groups = [_group(objects, 0), _group(objects, 1)]
        assert objects == groups[0] + groups[1]
        counts.add(tuple(len(g) for g in groups))
        for group in groups:
            assert len({(o.color, o.shape, o.size) for o in group}) == 1
        first, second = groups[0][0], groups[1][0]
        assert (first.color, first.shape, first.size) != (second.color, second.shape, second.size)
        for obj in objects:
            x, y, w, h = obj.bbox
            assert w == h and SIDES[obj.size][0] <= w <= SIDES[obj.size][1]
            assert x >= 0 and y >= 0 and x + w <= 299 and y + h <= 299
        for a, b in combinations(objects, 2):
            (ax, ay, aw, ah), (bx, by, bw, bh) = a.bbox, b.bbox
            assert not (ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah)
    assert counts == {(1, 2), (2, 1), (1, 3), (3, 1), (2, 2)}


def test_objects_are_drawn_in_their_boxes(scenes) -> None:
    image, _, objects = scenes[0]
    pixels = np.asarray(image).astype(int)  # (299, 299, 3)
    for obj in objects:
        x, y, w, h = (int(v) for v in obj.bbox)
        centre = pixels[y + h // 2 + h // 4, x + w // 2]  # inside circles, squares and triangles
        assert np.abs(centre - COLORS[obj.color]).max() == 0
    assert pixels[0, 0].min() > 220


def test_caption_lengths_vary(scenes) -> None:
    lengths = {len(caption.split()) for _, captions, _ in scenes[:50] for caption in captions}
    assert len(lengths) >= 3


def test_scenes_are_deterministic() -> None:
    a = render_scene(np.random.default_rng(7))
    b = render_scene(np.random.default_rng(7))
    assert a[1:] == b[1:]
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))


def test_write_and_load_dataset(tmp_path: Path) -> None:
    calls: list[int] = []
    out = write_scenes_dataset(tmp_path, n=10, seed=3, val_fraction=0.2, progress=calls.append)
    assert out == tmp_path and calls == list(range(1, 11))
    doc = json.loads((out / "annotations" / "captions_train.json").read_text())
    assert [a["id"] for a in doc["annotations"]] == list(range(24))
    assert [a["image_id"] for a in doc["annotations"]] == [i for i in range(8) for _ in range(3)]
    splits = load_dataset(out)
    assert {role: len(examples) for role, examples in splits.items()} == {"train": 8, "val": 2}
    for example in splits["train"] + splits["val"]:
        assert example.path.is_file() and example.size == SIZE
        assert len(example.captions) == 3
        assert {frozenset(o) for o in example.objects} == {
            frozenset({"color", "shape", "bbox", "size", "group"})
        }
        assert example.captions[0].split()[1] == example.objects[0]["size"]
    with pytest.raises(ValueError):
        write_scenes_dataset(tmp_path, n=3, val_fraction=1.5)


def _attention(phrase_targets: list[np.ndarray], words: list[str]) -> np.ndarray:
    """(T, 64) attention, each word's mass spread over the target of its phrase."""
    attention = np.zeros((len(words), 64))
    nouns = 0
    for row, word in zip(attention, words, strict=True):
        target = phrase_targets[min(nouns, len(phrase_targets) - 1)]
        row[target] = 1.0 / target.sum()
        nouns += word.rstrip("s") in ("circle", "square", "triangle")
    return attention


def _union(objects: list[SceneObject], group: int) -> np.ndarray:
    masks = [region_mask(o.bbox, SIZE) for o in _group(objects, group)]  # each (64,)
    return np.logical_or.reduce(masks)  # (64,)


def test_localization_on_group_unions(scenes) -> None:
    for _, captions, objects in scenes[:20]:
        for caption, order in zip(captions, ((0, 1), (1, 0), (0, 1)), strict=True):
            words = caption.split()
            inside = [_union(objects, g) for g in order]
            scores = localization_scores(words, _attention(inside, words), objects, SIZE)
            expected = sum(
                w in COLORS or w.rstrip("s") in ("circle", "square", "triangle") for w in words
            )
            assert scores == pytest.approx([1.0] * expected)
            outside = [~mask for mask in inside]
            json_objects = [obj.to_json() for obj in objects]
            scores = localization_scores(words, _attention(outside, words), json_objects, SIZE)
            assert scores == pytest.approx([0.0] * expected)


OBJECTS = [
    SceneObject("red", "circle", (0.0, 0.0, 30.0, 30.0), "small", 0),
    SceneObject("red", "circle", (0.0, 40.0, 30.0, 30.0), "small", 0),
    SceneObject("red", "circle", (200.0, 200.0, 70.0, 70.0), "large", 1),
]


def test_localization_matches_groups_by_attributes() -> None:
    small, large = _union(OBJECTS, 0), _union(OBJECTS, 1)
    words = "a large red circle right of two small red circles".split()
    attention = _attention([large, small], words)
    assert localization_scores(words, attention, OBJECTS, SIZE) == pytest.approx([1.0] * 4)
    # Without size words the phrases tie, so phrase k names group k.
    words = "two red circles left of a red circle".split()
    attention = _attention([small, large], words)
    assert localization_scores(words, attention, OBJECTS, SIZE) == pytest.approx([1.0] * 4)
    words = "a blue square above a large red circle".split()  # phrase 0 names no group
    attention = _attention([small, large], words)
    assert localization_scores(words, attention, OBJECTS, SIZE) == pytest.approx([1.0] * 2)


def test_shapes_set_ignores_plurals_and_sizes() -> None:
    objects = [
        ShapeObject("red", "circle", (0.0, 0.0, 100.0, 100.0)),
        ShapeObject("blue", "square", (200.0, 200.0, 80.0, 80.0)),
    ]
    words = "two small red circles left of a large blue square".split()
    attention = np.full((len(words), 64), 1 / 64)
    # Objects without `group` keep the shapes-set rules: "circles" is no shape word, so "red",
    # "blue" and "square" all belong to phrase 0, which names the blue square.
    share = region_mask(objects[1].bbox, SIZE).sum() / 64
    scores = localization_scores(words, attention, objects, SIZE)
    assert scores == pytest.approx([share] * 3)


def test_cli_writes_the_set(tmp_path: Path, capsys) -> None:
    from captioner.cli import main

    argv = ["data", "scenes", str(tmp_path), "--size", "5", "--seed", "2", "--val-fraction", "0.4"]
    assert main(argv) == 0
    assert "wrote 5 images" in capsys.readouterr().out
    splits = load_dataset(tmp_path)
    assert (len(splits["train"]), len(splits["val"])) == (3, 2)
    direct = write_scenes_dataset(tmp_path / "direct", n=5, seed=2, val_fraction=0.4)
    for rel in ("annotations/captions_val.json", "images/val/000004.png"):
        assert (tmp_path / rel).read_bytes() == (direct / rel).read_bytes()
