"""Pictures with Pillow only, shared by the CLI and the API (which never loads TF): attention
grids, and a training run's learning curves.

Pictures are converted to RGB as the model's input is (`core.images.to_rgb`), so the heat map
lies over the image the model saw: a transparent background is white, 16-bit grey is grey.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from core.images import to_rgb

MARGIN = 8  # pixels around and between tiles
LABEL_HEIGHT = 44  # band above each tile for its label: room for two lines of text
HEAT_ALPHA = 0.5  # weight of the heat colour in the blend
_FONT_SIZES = (18, 16, 14, 12)
_BACKDROP = (255, 255, 255)
_INK = (20, 20, 20)

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def jet(values: np.ndarray) -> np.ndarray:
    """Jet-like colour map: values in [0, 1] of any shape -> uint8 RGB with a trailing axis 3."""
    v = np.clip(values, 0.0, 1.0)[..., None]  # (..., 1)
    centres = np.array([0.75, 0.5, 0.25])  # where red, green and blue peak
    rgb = np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0)  # (..., 3)
    return (rgb * 255).round().astype(np.uint8)


def _to_image(image: Image.Image | np.ndarray) -> Image.Image:
    """RGB image from a Pillow image or an array (uint8, floats in [0, 1] / [0, 255] / [-1, 1])."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        if array.min() < 0:  # InceptionV3-style preprocessing maps pixels to [-1, 1]
            array = (array + 1.0) * 127.5
        elif array.max() <= 1.0:
            array = array * 255.0
        array = np.clip(array.round(), 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]  # (H, W, 1) -> (H, W)
    return Image.fromarray(array).convert("RGB")


def heat_overlay(image: Image.Image, weights: np.ndarray) -> Image.Image:
    """Blend a grid of weights (g*g,), upsampled bilinearly to the image, on top as heat colours."""
    grid = int(round(math.sqrt(weights.size)))
    cells = np.asarray(weights, dtype=np.float32).reshape(grid, grid)  # (g*g,) -> (g, g)
    span = float(cells.max() - cells.min())
    # Stretched to the full colour range, as an auto-scaled heat map would be.
    cells = (cells - cells.min()) / span if span > 0 else np.zeros_like(cells)
    smooth = Image.fromarray(cells, "F").resize(image.size, Image.Resampling.BILINEAR)
    heat = jet(np.asarray(smooth)).astype(np.float32)  # (H, W, 3)
    base = np.asarray(image, dtype=np.float32)  # (H, W, 3)
    blended = (1.0 - HEAT_ALPHA) * base + HEAT_ALPHA * heat
    return Image.fromarray(blended.round().astype(np.uint8), "RGB")


def _font(size: int) -> Font:
    """Pillow's default font at `size` (its fixed bitmap font when FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError):
        return ImageFont.load_default()


def _fit_label(draw: ImageDraw.ImageDraw, text: str, width: int) -> tuple[Font, list[str]]:
    """Largest font whose one or two lines of `text` fit `width`; words wrap greedily."""
    for lines_allowed in (1, 2):
        for size in _FONT_SIZES:
            font = _font(size)
            lines = _wrap(draw, text, font, width)
            if len(lines) <= lines_allowed:
                return font, lines
    font = _font(_FONT_SIZES[-1])
    return font, _wrap(draw, text, font, width)[:2]  # still too long: drop what does not fit


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Font, width: int) -> list[str]:
    """Greedy word wrap of `text` into lines no wider than `width` (a lone long word overflows)."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and draw.textlength(candidate, font=font) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines or [""]


def tile_box(index: int, columns: int, tile: int = 224) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the picture of tile `index` in the grid (label excluded)."""
    row, col = divmod(index, columns)
    left = MARGIN + col * (tile + MARGIN)
    top = MARGIN + row * (LABEL_HEIGHT + tile + MARGIN) + LABEL_HEIGHT
    return left, top, left + tile, top + tile


def _draw_label(canvas: Image.Image, box: tuple[int, int, int, int], text: str) -> None:
    """Write `text` centred in the label band above a tile."""
    draw = ImageDraw.Draw(canvas)
    left, top, right, _ = box
    font, lines = _fit_label(draw, text, right - left)
    line_height = LABEL_HEIGHT // 2
    first_top = top - LABEL_HEIGHT + (LABEL_HEIGHT - line_height * len(lines)) // 2
    for i, line in enumerate(lines):
        # Centred from the text's own box: anchors are not supported by the bitmap fallback font.
        x0, y0, x1, y1 = draw.textbbox((0, 0), line, font=font)
        x = (left + right - (x1 - x0)) / 2 - x0
        y = first_top + line_height * i + (line_height - (y1 - y0)) / 2 - y0
        draw.text((x, y), line, fill=_INK, font=font)


def render_attention_grid(
    image: Image.Image | np.ndarray,
    words: Sequence[str],
    attention: np.ndarray,
    columns: int = 4,
    tile: int = 224,
) -> Image.Image:
    """Grid of tiles: the plain image under the whole caption, then one heat map per word."""
    attention = np.asarray(attention)  # (T, g*g)
    if attention.ndim != 2 or attention.shape[0] != len(words):
        raise ValueError(f"attention {attention.shape} must be (len(words), grid*grid)")
    picture = _to_image(image).resize((tile, tile), Image.Resampling.BILINEAR)
    tiles = [(" ".join(words), picture)]
    for word, row in zip(words, attention, strict=True):
        tiles.append((word, heat_overlay(picture, row)))
    columns = max(1, min(columns, len(tiles)))  # no empty columns for short captions
    rows = math.ceil(len(tiles) / columns)
    size = (
        MARGIN + columns * (tile + MARGIN),
        MARGIN + rows * (LABEL_HEIGHT + tile + MARGIN),
    )
    canvas = Image.new("RGB", size, _BACKDROP)
    for index, (label, picture_tile) in enumerate(tiles):
        box = tile_box(index, columns, tile)
        canvas.paste(picture_tile, box[:2])
        _draw_label(canvas, box, label)
    return canvas


def save_attention_png(
    path: Path,
    image: Image.Image | np.ndarray,
    words: Sequence[str],
    attention: np.ndarray,
) -> Path:
    """Render the attention grid and write it as a PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    render_attention_grid(image, words, attention).save(path)
    return path


# ---- learning curves: a training run's history, one point per epoch ----

CURVES_SIZE = (800, 450)
CURVES_MARGINS = (72, 56, 72, 56)  # left, top (the legend), right, bottom (pixels)
LOSS_COLOUR = (224, 123, 0)  # orange, as the web page's per-epoch loss
ACCURACY_COLOUR = (106, 61, 154)  # purple
METRIC_COLOUR = (46, 139, 87)  # green, as the web page's validation score
_GRID = (225, 228, 234)
_MUTED = (90, 98, 114)
_NOT_METRICS = ("epoch", "loss", "accuracy")
_MARKERS_UP_TO = 60  # epochs; with more, only points with no neighbour get a marker


@dataclass(frozen=True)
class Curves:
    """A run's history as columns: one entry per epoch, None where an epoch has no value."""

    epochs: list[int]
    loss: list[float | None]
    accuracy: list[float | None]  # training token accuracy; None for runs from before it
    metrics: dict[str, list[float | None]]  # validation metrics, in the order the rows name them


def _number(value: object) -> float | None:
    """A finite number as a float; None for anything else (null, NaN, text, booleans)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def learning_curves(history: Sequence[dict] | None) -> Curves:
    """The rows that have a whole `epoch`, sorted by it, as columns; every other key whose values
    are all numbers or null is a validation metric."""
    rows = sorted(
        (r for r in history or () if isinstance(r, dict) and type(r.get("epoch")) is int),
        key=lambda r: r["epoch"],
    )
    names = dict.fromkeys(key for row in rows for key in row if key not in _NOT_METRICS)
    numeric = [name for name in names if all(_numeric(row.get(name)) for row in rows)]
    return Curves(
        epochs=[row["epoch"] for row in rows],
        loss=_column(rows, "loss"),
        accuracy=_column(rows, "accuracy"),
        metrics={name: _column(rows, name) for name in numeric},
    )


def _column(rows: list[dict], name: str) -> list[float | None]:
    """The rows' values of `name` as numbers (None where a row has none)."""
    return [_number(row.get(name)) for row in rows]


def _numeric(value: object) -> bool:
    """Whether `value` is null or a number (NaN included): what a metric's column holds."""
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def nice_ceiling(value: float, ticks: int = 4) -> float:
    """The top of an axis from 0 that reaches `value` (> 0) in `ticks` steps of 1, 1.5, 2, 2.5, 5
    or 7.5 times a power of ten."""
    power = 10.0 ** math.floor(math.log10(value / ticks))
    steps = (step * power for step in (1, 1.5, 2, 2.5, 5, 7.5, 10))
    return ticks * next(step for step in steps if step * ticks >= value * (1 - 1e-9))


def plot_box(size: tuple[int, int] = CURVES_SIZE) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the curves' plotting area in a picture of `size`."""
    left, top, right, bottom = CURVES_MARGINS
    return left, top, size[0] - right, size[1] - bottom


def epoch_range(epochs: Sequence[int]) -> tuple[float, float]:
    """The x axis: half an epoch beyond the first and last (0 to 1 with none)."""
    return (min(epochs) - 0.5, max(epochs) + 0.5) if epochs else (0.0, 1.0)


@dataclass(frozen=True)
class _Axes:
    """Where values land: x in epochs, y from 0 to `loss_top` (left) or `score_top` (right)."""

    box: tuple[int, int, int, int]
    x_range: tuple[float, float]
    loss_top: float
    score_top: float

    def x(self, epoch: float) -> float:
        left, _, right, _ = self.box
        low, high = self.x_range
        return left + (epoch - low) / (high - low) * (right - left)

    def y(self, value: float, top: float) -> float:
        _, upper, _, lower = self.box
        return lower - min(max(value / top, 0.0), 1.0) * (lower - upper)


def _axes(curves: Curves, scores: list[list[float | None]], size: tuple[int, int]) -> _Axes:
    """Axes that fit the losses (left) and the scores (right: 0 to 1, or more for CIDEr)."""
    losses = [v for v in curves.loss if v is not None and v > 0]
    highest = [v for column in scores for v in column if v is not None and v > 0]
    return _Axes(
        plot_box(size),
        epoch_range(curves.epochs),
        nice_ceiling(max(losses)) if losses else 1.0,
        max(1.0, nice_ceiling(max(highest))) if highest else 1.0,
    )


def _write(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    font: Font,
    align: str = "center",
    fill: tuple[int, int, int] = _INK,
) -> None:
    """Write `text` centred on y, with x its left, centre or right."""
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)  # no anchors: the bitmap font
    shift = {"left": 0, "center": (x1 - x0) / 2, "right": x1 - x0}[align]
    draw.text((xy[0] - shift - x0, xy[1] - (y1 - y0) / 2 - y0), text, fill=fill, font=font)


def _draw_frame(draw: ImageDraw.ImageDraw, axes: _Axes, epochs: Sequence[int], width: int) -> None:
    """Grid lines, both y axes with their ticks and labels, and the epoch ticks below."""
    left, top, right, bottom = axes.box
    small, label = _font(12), _font(14)
    for i in range(5):
        y = bottom - i * (bottom - top) / 4
        draw.line([(left, y), (right, y)], fill=_GRID)
        _write(draw, (left - 6, y), f"{axes.loss_top * i / 4:.3g}", small, "right")
        _write(draw, (right + 6, y), f"{axes.score_top * i / 4:.3g}", small, "left")
    draw.line([(left, top), (left, bottom), (right, bottom), (right, top)], fill=_MUTED)
    first, last = min(epochs, default=1), max(epochs, default=0)
    for epoch in range(first, last + 1, max(1, math.ceil((last - first + 1) / 10))):
        draw.line([(axes.x(epoch), bottom), (axes.x(epoch), bottom + 4)], fill=_MUTED)
        _write(draw, (axes.x(epoch), bottom + 14), str(epoch), small)
    _write(draw, ((left + right) / 2, bottom + 38), "epoch", label)
    _write(draw, (8, top - 16), "training loss", label, "left")
    score = "score (0-1)" if axes.score_top == 1.0 else "score"
    _write(draw, (width - 8, top - 16), score, label, "right")


def _draw_legend(draw: ImageDraw.ImageDraw, entries: list[tuple[str, tuple]], width: int) -> None:
    """Colour swatches and names in one centred row along the top."""
    font = _font(14)
    widths = [28 + draw.textlength(name, font=font) for name, _ in entries]
    x = (width - sum(widths) - 20 * (len(entries) - 1)) / 2
    for (name, colour), room in zip(entries, widths, strict=True):
        draw.line([(x, 16), (x + 20, 16)], fill=colour, width=3)
        _write(draw, (x + 28, 16), name, font, "left")
        x += room + 20


def _draw_series(
    draw: ImageDraw.ImageDraw,
    points: list[tuple[float, float] | None],
    colour: tuple[int, int, int],
    markers: bool,
) -> None:
    """A line through consecutive points, broken where a point is None; a dot on each point
    (only on lone points when `markers` is off)."""
    runs: list[list[tuple[float, float]]] = [[]]
    for point in points:
        if point is None:
            runs.append([])
        else:
            runs[-1].append(point)
    for run in runs:
        if len(run) > 1:
            draw.line(run, fill=colour, width=2, joint="curve")
        for x, y in run if markers or len(run) == 1 else ():
            draw.ellipse([(x - 3, y - 3), (x + 3, y + 3)], fill=colour)


def render_curves(
    history: Sequence[dict] | None, metric: str, size: tuple[int, int] = CURVES_SIZE
) -> Image.Image:
    """A line chart of a run's epochs: training loss on the left axis; training token accuracy
    and the validation `metric` on the right one (0 to 1). Null values leave gaps."""
    curves = learning_curves(history)
    # (values, colour, legend, on the right axis)
    series = [
        (curves.loss, LOSS_COLOUR, "training loss (left)", False),
        (curves.accuracy, ACCURACY_COLOUR, "token accuracy (right)", True),
        (
            curves.metrics.get(metric, [None] * len(curves.epochs)),
            METRIC_COLOUR,
            f"validation {metric} (right)",
            True,
        ),
    ]
    axes = _axes(curves, [values for values, _, _, right in series if right], size)
    canvas = Image.new("RGB", size, _BACKDROP)
    draw = ImageDraw.Draw(canvas)
    _draw_frame(draw, axes, curves.epochs, size[0])
    _draw_legend(draw, [(name, colour) for _, colour, name, _ in series], size[0])
    markers = len(curves.epochs) <= _MARKERS_UP_TO
    for values, colour, _, right in series:
        top = axes.score_top if right else axes.loss_top
        points = [
            None if v is None else (axes.x(e), axes.y(v, top))
            for e, v in zip(curves.epochs, values, strict=True)
        ]
        _draw_series(draw, points, colour, markers)
    if not curves.epochs:
        left, top, right, bottom = axes.box
        _write(draw, ((left + right) / 2, (top + bottom) / 2), "no epochs yet", _font(18))
    return canvas
