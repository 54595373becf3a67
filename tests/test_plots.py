"""Tests for the attention pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.plots import (
    LABEL_HEIGHT,
    MARGIN,
    jet,
    render_attention_grid,
    save_attention_png,
    tile_box,
)

WORDS = ["a", "red", "circle", "<end>"]


def _image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(200, 256, size=(299, 299, 3), dtype=np.uint8), "RGB")


def _one_hot(cell: int, rows: int = len(WORDS)) -> np.ndarray:
    attention = np.zeros((rows, 64))
    attention[:, cell] = 1.0
    return attention


def test_jet_runs_blue_to_red() -> None:
    colours = jet(np.array([0.0, 0.5, 1.0])).astype(int)  # (3, 3)
    assert colours.shape == (3, 3)
    low, mid, high = colours
    assert low[2] > low[0] and low[2] > low[1]  # blue
    assert mid[1] == 255  # green in the middle
    assert high[0] > high[1] and high[0] > high[2]  # red


@pytest.mark.parametrize("columns, rows", [(4, 2), (5, 1), (2, 3)])
def test_grid_size(columns: int, rows: int) -> None:
    grid = render_attention_grid(_image(), WORDS, _one_hot(0), columns=columns, tile=64)
    assert grid.mode == "RGB"
    used = min(columns, len(WORDS) + 1)
    assert grid.size == (
        MARGIN + used * (64 + MARGIN),
        MARGIN + rows * (LABEL_HEIGHT + 64 + MARGIN),
    )


def test_first_tile_is_the_plain_image() -> None:
    image = _image()
    grid = render_attention_grid(image, WORDS, _one_hot(0), tile=224)
    first = np.asarray(grid.crop(tile_box(0, 4, 224)))
    expected = np.asarray(image.resize((224, 224), Image.Resampling.BILINEAR))
    assert np.array_equal(first, expected)
    label_band = np.asarray(grid.crop((MARGIN, MARGIN, MARGIN + 224, MARGIN + LABEL_HEIGHT)))
    assert label_band.min() < 100  # the caption is written above the tile


def test_heat_is_hot_where_attention_is_high() -> None:
    image = Image.new("RGB", (299, 299), (128, 128, 128))
    top_left = np.asarray(render_attention_grid(image, WORDS, _one_hot(0)).crop(tile_box(1, 4)))
    corner, far = top_left[10, 10].astype(int), top_left[-10, -10].astype(int)
    assert corner[0] > corner[2] + 50  # red-ish where the attention is
    assert far[2] > far[0] + 50  # blue-ish elsewhere
    bottom_right = np.asarray(
        render_attention_grid(image, WORDS, _one_hot(63)).crop(tile_box(1, 4))
    )
    assert np.abs(top_left[:28, :28].astype(int) - bottom_right[:28, :28]).mean() > 50


def test_accepts_arrays() -> None:
    as_uint8 = np.asarray(_image())
    as_float = as_uint8 / 255.0
    a = render_attention_grid(as_uint8, WORDS, _one_hot(5), tile=32)
    b = render_attention_grid(as_float, WORDS, _one_hot(5), tile=32)
    assert a.size == b.size
    assert np.abs(np.asarray(a).astype(int) - np.asarray(b)).max() <= 1


def test_rejects_mismatched_attention() -> None:
    with pytest.raises(ValueError):
        render_attention_grid(_image(), WORDS, _one_hot(0, rows=3))


def test_save_attention_png(tmp_path: Path) -> None:
    path = save_attention_png(tmp_path / "sub" / "att.png", _image(), WORDS, _one_hot(9))
    assert path == tmp_path / "sub" / "att.png"
    with Image.open(path) as saved:
        assert saved.format == "PNG" and saved.mode == "RGB"
