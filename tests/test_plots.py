"""Tests for the attention pictures and the learning curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.plots import (
    ACCURACY_COLOUR,
    CURVES_SIZE,
    LABEL_HEIGHT,
    LOSS_COLOUR,
    MARGIN,
    METRIC_COLOUR,
    epoch_range,
    jet,
    learning_curves,
    nice_ceiling,
    plot_box,
    render_attention_grid,
    render_curves,
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


# ---- learning curves ----


def _history(epochs: int = 4, accuracy: bool = True) -> list[dict]:
    """Loss falling from 2 to 0.5, accuracy and bleu4 rising, cider above 1."""
    rows = []
    for e in range(1, epochs + 1):
        row = {
            "epoch": e,
            "loss": 2.0 / e,
            "bleu1": 0.5,
            "bleu4": 0.1 * e,
            "cider": 0.5 * e,
            "exact_match": 0.0,
            "localization": None,
        }
        rows.append(row | ({"accuracy": 0.2 * e} if accuracy else {}))
    return rows


def _where(picture, colour, box=None) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) of the pixels of exactly `colour`, inside `box` (the plotting area and the
    markers' overhang)."""
    left, top, right, bottom = box or np.add(plot_box(picture.size), (-4, -4, 4, 4))
    pixels = np.asarray(picture).astype(int)[top : bottom + 1, left : right + 1]  # (H, W, 3)
    ys, xs = np.nonzero((pixels == colour).all(axis=-1))
    return ys + top, xs + left


def _pixel(epoch: float, value: float, top: float, epochs: list[int]) -> tuple[float, float]:
    """Where a value lands: x between the epochs' half-epoch margins, y from 0 to `top`."""
    left, upper, right, lower = plot_box()
    low, high = epoch_range(epochs)
    return left + (epoch - low) / (high - low) * (right - left), lower - value / top * (
        lower - upper
    )


def _near(picture, colour, point: tuple[float, float], radius: int = 3) -> bool:
    """Whether a pixel of `colour` lies within `radius` of `point`."""
    ys, xs = _where(picture, colour)
    return bool(((np.abs(xs - point[0]) <= radius) & (np.abs(ys - point[1]) <= radius)).any())


def test_learning_curves_are_columns_with_gaps_and_only_numeric_metrics() -> None:
    rows = [
        {"epoch": 2, "loss": 1.0, "bleu4": None, "note": "x"},
        {"epoch": 1, "loss": float("nan"), "accuracy": 0.5, "bleu4": 0.2, "note": 3},
        {"loss": 9.0},
        {"epoch": True, "loss": 9.0},
    ]
    curves = learning_curves(rows)
    assert curves.epochs == [1, 2]  # sorted; rows without a whole epoch left out
    assert curves.loss == [None, 1.0]  # NaN is no value
    assert curves.accuracy == [0.5, None]
    assert curves.metrics == {"bleu4": [0.2, None]}  # "note" holds text: not a metric
    assert learning_curves(None) == learning_curves([])


@pytest.mark.parametrize(
    ("value", "top"), [(3, 3), (0.9, 1), (1, 1), (2.31, 3), (8.5, 10), (0.013, 0.02), (100, 100)]
)
def test_nice_ceiling(value: float, top: float) -> None:
    assert nice_ceiling(value) == pytest.approx(top)


def test_curves_size_and_content() -> None:
    picture = render_curves(_history(), "bleu4")
    assert picture.mode == "RGB" and picture.size == CURVES_SIZE
    pixels = np.asarray(picture)
    assert (pixels < 128).all(axis=-1).sum() > 500  # text, ticks and axes
    assert render_curves(_history(), "bleu4", size=(640, 360)).size == (640, 360)


def test_each_curve_is_drawn_in_its_colour_where_its_values_are() -> None:
    picture, epochs = render_curves(_history(), "bleu4"), [1, 2, 3, 4]
    for e in epochs:
        assert _near(picture, LOSS_COLOUR, _pixel(e, 2.0 / e, 2.0, epochs)), e  # left: 0 to 2
        assert _near(picture, ACCURACY_COLOUR, _pixel(e, 0.2 * e, 1.0, epochs)), e
        assert _near(picture, METRIC_COLOUR, _pixel(e, 0.1 * e, 1.0, epochs)), e
    ys, xs = _where(picture, LOSS_COLOUR)
    assert ys[xs < xs.mean()].mean() < ys[xs > xs.mean()].mean()  # falls: higher on the left
    ys, xs = _where(picture, ACCURACY_COLOUR)
    assert ys[xs < xs.mean()].mean() > ys[xs > xs.mean()].mean()  # rises


def test_the_metric_chosen_is_the_one_drawn_and_its_axis_grows_past_one() -> None:
    picture, epochs = render_curves(_history(), "cider"), [1, 2, 3, 4]
    for e in epochs:  # cider reaches 2: the right axis goes 0 to 2
        assert _near(picture, METRIC_COLOUR, _pixel(e, 0.5 * e, 2.0, epochs)), e
        assert _near(picture, ACCURACY_COLOUR, _pixel(e, 0.2 * e, 2.0, epochs)), e
    assert not _near(picture, METRIC_COLOUR, _pixel(4, 0.4, 2.0, epochs))  # not bleu4


def test_a_missing_value_leaves_a_gap() -> None:
    history = _history()
    history[1]["bleu4"] = None  # epoch 2
    picture, epochs = render_curves(history, "bleu4"), [1, 2, 3, 4]
    x1, _ = _pixel(1, 0, 1, epochs)
    x2, _ = _pixel(2, 0, 1, epochs)
    x3, _ = _pixel(3, 0, 1, epochs)
    _, xs = _where(picture, METRIC_COLOUR)
    assert not ((xs > x1 + 4) & (xs < x3 - 4)).any()  # nothing from epoch 1 to 3
    _, xs = _where(picture, ACCURACY_COLOUR)
    assert ((xs > x1 + 4) & (xs < x2 - 4)).any()  # while accuracy runs through


def test_a_run_without_token_accuracy_draws_no_accuracy_curve() -> None:
    picture = render_curves(_history(accuracy=False), "bleu4")
    assert _where(picture, ACCURACY_COLOUR)[0].size == 0
    assert _where(picture, LOSS_COLOUR)[0].size > 50
    legend = (0, 0, CURVES_SIZE[0] - 1, plot_box()[1] - 20)
    assert _where(picture, ACCURACY_COLOUR, legend)[0].size > 0  # still named in the legend


def test_a_single_epoch_is_a_point_in_the_middle() -> None:
    picture = render_curves(_history(epochs=1), "bleu4")
    left, _, right, _ = plot_box()
    for colour, value, top in [
        (LOSS_COLOUR, 2.0, 2.0),
        (ACCURACY_COLOUR, 0.2, 1.0),
        (METRIC_COLOUR, 0.1, 1.0),
    ]:
        ys, xs = _where(picture, colour)
        assert 0 < xs.size < 60, colour  # a dot, no line
        assert abs(xs.mean() - (left + right) / 2) <= 1
        assert abs(ys.mean() - _pixel(1, value, top, [1])[1]) <= 1


def test_an_empty_history_is_an_empty_chart_that_says_so() -> None:
    picture = render_curves([], "bleu4")
    assert picture.size == CURVES_SIZE
    for colour in (LOSS_COLOUR, ACCURACY_COLOUR, METRIC_COLOUR):
        assert _where(picture, colour)[0].size == 0
    left, top, right, bottom = plot_box()
    middle = np.asarray(picture)[
        (top + bottom) // 2 - 12 : (top + bottom) // 2 + 12, left + 100 : right - 100
    ]
    assert (middle < 100).all(axis=-1).sum() > 50  # "no epochs yet"
