"""Tests for the synthetic shapes dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.scenes import write_scenes_dataset
from model.shapes import COLORS, RELATIONS, SHAPES, ShapeObject, render_scene, write_shapes_dataset


def _centre(obj: ShapeObject) -> tuple[float, float]:
    x, y, w, h = obj.bbox
    return x + w / 2, y + h / 2


def _overlap(a: ShapeObject, b: ShapeObject) -> bool:
    ax, ay, aw, ah = a.bbox
    bx, by, bw, bh = b.bbox
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


@pytest.fixture(scope="module")
def scenes() -> list[tuple[Image.Image, str, list[ShapeObject]]]:
    rng = np.random.default_rng(123)
    return [render_scene(rng) for _ in range(200)]


def test_constants() -> None:
    assert set(COLORS) == {"red", "green", "blue", "yellow", "purple"}
    assert SHAPES == ("circle", "square", "triangle")
    assert RELATIONS == ("left of", "above")
    colours = np.array(list(COLORS.values()), dtype=float)
    distances = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
    assert distances[~np.eye(len(COLORS), dtype=bool)].min() > 80


def test_scene_basics(scenes) -> None:
    for image, caption, objects in scenes:
        assert image.mode == "RGB" and image.size == (299, 299)
        assert len(objects) == 2
        assert (objects[0].color, objects[0].shape) != (objects[1].color, objects[1].shape)
        assert not caption.endswith(".")
        assert not _overlap(*objects)
        for obj in objects:
            x, y, w, h = obj.bbox
            assert 50 <= w <= 90 and 50 <= h <= 90
            assert x >= 0 and y >= 0 and x + w <= 299 and y + h <= 299


def test_caption_mentions_left_or_top_object_first(scenes) -> None:
    relations = set()
    for _, caption, objects in scenes:
        first, second = objects
        assert caption == (
            f"a {first.color} {first.shape} "
            f"{'left of' if 'left of' in caption else 'above'} a {second.color} {second.shape}"
        )
        (x0, y0), (x1, y1) = _centre(first), _centre(second)
        if "left of" in caption:
            relations.add("left of")
            assert first.bbox[0] + first.bbox[2] < 299 / 2 < second.bbox[0]
            assert abs(x1 - x0) > abs(y1 - y0)  # the relation is the dominant offset
        else:
            relations.add("above")
            assert first.bbox[1] + first.bbox[3] < 299 / 2 < second.bbox[1]
            assert abs(y1 - y0) > abs(x1 - x0)
    assert relations == {"left of", "above"}


def test_shapes_are_drawn_in_their_boxes(scenes) -> None:
    image, _, objects = scenes[0]
    pixels = np.asarray(image).astype(int)  # (299, 299, 3)
    for obj in objects:
        x, y, w, h = (int(v) for v in obj.bbox)
        centre = pixels[y + h // 2 + h // 4, x + w // 2]  # inside circles, squares and triangles
        assert np.abs(centre - COLORS[obj.color]).max() == 0
    assert pixels[0, 0].min() > 220  # near-white background
    assert len(np.unique(pixels[:5, :5, 0])) > 1  # with some noise


def test_scenes_are_deterministic() -> None:
    a = render_scene(np.random.default_rng(7))
    b = render_scene(np.random.default_rng(7))
    assert a[1:] == b[1:]
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))


def _read_split(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"captions_{split}.json").read_text())


def test_write_dataset(tmp_path: Path) -> None:
    calls: list[int] = []
    out = write_shapes_dataset(
        tmp_path / "a", n=10, seed=3, val_fraction=0.2, progress=calls.append
    )
    assert out == tmp_path / "a"
    assert calls == list(range(1, 11))
    train, val = _read_split(out, "train"), _read_split(out, "val")
    assert (len(train["images"]), len(val["images"])) == (8, 2)
    assert {"info", "licenses", "images", "annotations"} <= set(train)
    for split, doc in (("train", train), ("val", val)):
        ids = {image["id"] for image in doc["images"]}
        assert [a["image_id"] for a in doc["annotations"]] == [i["id"] for i in doc["images"]]
        assert len(ids) == len(doc["images"])
        for record, annotation in zip(doc["images"], doc["annotations"], strict=True):
            path = out / "images" / split / record["file_name"]
            with Image.open(path) as image:
                assert image.format == "PNG" and image.mode == "RGB"
                assert image.size == (record["width"], record["height"]) == (299, 299)
            first, second = record["objects"]
            assert set(first) == {"color", "shape", "bbox"} and len(first["bbox"]) == 4
            assert annotation["caption"].startswith(f"a {first['color']} {first['shape']} ")
            assert annotation["caption"].endswith(f" a {second['color']} {second['shape']}")
    assert not set(i["id"] for i in train["images"]) & set(i["id"] for i in val["images"])
    assert sorted(p.name for p in (out / "images" / "val").iterdir()) == [
        i["file_name"] for i in val["images"]
    ]


@pytest.mark.parametrize("write", [write_shapes_dataset, write_scenes_dataset])
def test_write_dataset_is_deterministic(tmp_path: Path, write) -> None:
    a = write(tmp_path / "a", n=4, seed=11, val_fraction=0.25)
    b = write(tmp_path / "b", n=4, seed=11, val_fraction=0.25)
    c = write(tmp_path / "c", n=4, seed=12, val_fraction=0.25)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 4 + 2
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert any((a / rel).read_bytes() != (c / rel).read_bytes() for rel in files)


def test_write_dataset_split_rounding(tmp_path: Path) -> None:
    out = write_shapes_dataset(tmp_path, n=7, seed=0, val_fraction=0.3)  # round(2.1) == 2
    assert len(_read_split(out, "train")["images"]) == 5
    assert len(_read_split(out, "val")["images"]) == 2
    with pytest.raises(ValueError):
        write_shapes_dataset(tmp_path, n=3, val_fraction=1.5)
