"""Attention pictures with Pillow only: shared by the CLI and the API (which never loads TF).

Pictures are converted to RGB as the model's input is (`core.images.to_rgb`), so the heat map
lies over the image the model saw: a transparent background is white, 16-bit grey is grey.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
