"""Synthetic COCO-format captioning data: two coloured shapes and their spatial relation.

Each scene holds two filled shapes on a noisy near-white background. The two objects are
separated clearly along one axis and stay close along the other, so the relation ("left of" or
"above"), and with it the whole caption, is a deterministic function of the image.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
RELATIONS: tuple[str, ...] = ("left of", "above")

MIN_SIDE, MAX_SIDE = 50, 90  # object bounding-box side in pixels (inclusive)
BORDER = 8  # keep objects this far from the image edge so they are never cut off
GAP = 10  # minimum empty band between the two halves that hold the two objects
_MAX_CROSS_OFFSET = 40  # centres differ by at most this on the axis that is NOT the relation
_BACKGROUND = 244  # grey level of the background before noise
_NOISE = 6  # background noise is uniform in [-_NOISE, _NOISE] per pixel


@dataclass(frozen=True)
class ShapeObject:
    """One object in a scene; `bbox` is (x, y, w, h) in image pixels."""

    color: str
    shape: str
    bbox: tuple[float, float, float, float]

    def to_json(self) -> dict:
        """The object as stored under `objects` in the annotations JSON."""
        record = asdict(self)
        record["bbox"] = list(self.bbox)
        return record


def _pick_kinds(rng: np.random.Generator) -> list[tuple[str, str]]:
    """Two distinct (colour, shape) pairs: they may share a colour or a shape, not both."""
    kinds = [(color, shape) for color in COLORS for shape in SHAPES]
    first, second = rng.choice(len(kinds), size=2, replace=False)
    return [kinds[first], kinds[second]]


def _place(rng: np.random.Generator, sides: list[int], size: int) -> list[tuple[int, int]]:
    """Top-left corners along the relation axis: first object in the low half, second high.

    Returns (main, cross) coordinates: `main` on the relation axis, `cross` on the other.
    """
    half = size / 2
    low_main = int(rng.integers(BORDER, int(half - GAP / 2 - sides[0]) + 1))
    high_main = int(rng.integers(int(np.ceil(half + GAP / 2)), size - BORDER - sides[1] + 1))
    # Centres stay close across the relation axis so the other relation never reads as clear.
    centre0 = rng.integers(BORDER + sides[0] // 2, size - BORDER - sides[0] + sides[0] // 2 + 1)
    lo = max(BORDER + sides[1] // 2, centre0 - _MAX_CROSS_OFFSET)
    hi = min(size - BORDER - sides[1] + sides[1] // 2, centre0 + _MAX_CROSS_OFFSET)
    centre1 = rng.integers(lo, hi + 1)
    return [
        (low_main, int(centre0) - sides[0] // 2),
        (high_main, int(centre1) - sides[1] // 2),
    ]


def draw_object(draw: ImageDraw.ImageDraw, obj: ShapeObject) -> None:
    """Fill one object so that it exactly covers its bounding box."""
    x, y, w, h = (int(v) for v in obj.bbox)
    box = (x, y, x + w - 1, y + h - 1)  # Pillow boxes include their last pixel
    fill = COLORS[obj.color]
    if obj.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif obj.shape == "square":
        draw.rectangle(box, fill=fill)
    else:  # upright triangle: base along the bottom edge, apex centred on the top edge
        draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) / 2, y)], fill=fill)


def background(rng: np.random.Generator, size: int) -> Image.Image:
    """Near-white background with slight per-pixel noise."""
    # Grey noise (one offset for all channels): images still differ, but PNGs are half the size.
    noise = rng.integers(-_NOISE, _NOISE + 1, size=(size, size, 1), dtype=np.int16)
    grey = np.clip(_BACKGROUND + noise, 0, 255).astype(np.uint8)  # (size, size, 1)
    return Image.fromarray(np.repeat(grey, 3, axis=2), "RGB")  # (size, size, 3)


def caption_for(objects: list[ShapeObject], relation: str) -> str:
    """Caption naming the first object, the relation, then the second object."""
    first, second = objects
    return f"a {first.color} {first.shape} {relation} a {second.color} {second.shape}"


def render_scene(
    rng: np.random.Generator, size: int = 299
) -> tuple[Image.Image, str, list[ShapeObject]]:
    """Draw one scene; returns the image, its caption and its objects in caption order."""
    if size < 2 * (MAX_SIDE + BORDER) + GAP:
        raise ValueError(f"size must be at least {2 * (MAX_SIDE + BORDER) + GAP}")
    relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
    kinds = _pick_kinds(rng)
    sides = [int(s) for s in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2)]
    corners = _place(rng, sides, size)
    objects = []
    for (color, shape), side, (main, cross) in zip(kinds, sides, corners, strict=True):
        # "left of" separates along x, "above" along y; the first object is left / on top.
        x, y = (main, cross) if relation == "left of" else (cross, main)
        objects.append(ShapeObject(color, shape, (float(x), float(y), float(side), float(side))))
    image = background(rng, size)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        draw_object(draw, obj)
    return image, caption_for(objects, relation), objects


# One scene from a random generator: the image, its reference captions and its objects.
Render = Callable[[np.random.Generator], tuple[Image.Image, list[str], list]]
SHAPES_DESCRIPTION = "Synthetic coloured shapes with spatial relations"


def coco_json(
    seed: int,
    split: str,
    images: list[dict],
    captions: list[dict],
    description: str = SHAPES_DESCRIPTION,
) -> dict:
    """A COCO captions document for one split."""
    info = {"description": description, "version": "1.0", "split": split, "seed": seed}
    return {"info": info, "licenses": [], "images": images, "annotations": captions}


def _write_scene(
    render: Render, rng: np.random.Generator, folder: Path, index: int
) -> tuple[dict, list[dict]]:
    """Render scene `index` into `folder`; its COCO image record and caption records (caption k
    of an image with c captions has id c * index + k)."""
    image, captions, objects = render(rng)
    # Ids and file names are global indices: unique across splits, as in COCO.
    file_name = f"{index:06d}.png"
    # Low compression: the noisy background barely shrinks at higher levels, which are slower.
    image.save(folder / file_name, compress_level=1)
    record = {
        "id": index,
        "file_name": file_name,
        "width": image.width,
        "height": image.height,
        "objects": [obj.to_json() for obj in objects],
    }
    count = len(captions)
    return record, [
        {"id": count * index + k, "image_id": index, "caption": caption}
        for k, caption in enumerate(captions)
    ]


def write_coco_set(
    out_dir: Path,
    n: int,
    seed: int,
    val_fraction: float,
    render: Render,
    description: str,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write `n` scenes drawn by `render` as PNGs plus COCO caption JSON per split; the last
    ones go to val."""
    if n < 0 or not 0.0 <= val_fraction <= 1.0:
        raise ValueError("need n >= 0 and 0 <= val_fraction <= 1")
    out_dir = Path(out_dir)
    n_val = round(n * val_fraction)
    rng = np.random.default_rng(seed)
    records: dict[str, tuple[list[dict], list[dict]]] = {"train": ([], []), "val": ([], [])}
    for split in records:
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
    for index in range(n):
        split = "train" if index < n - n_val else "val"
        record, captions = _write_scene(render, rng, out_dir / "images" / split, index)
        records[split][0].append(record)
        records[split][1].extend(captions)
        if progress is not None:
            progress(index + 1)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    for split, (images, captions) in records.items():
        document = coco_json(seed, split, images, captions, description)
        (out_dir / "annotations" / f"captions_{split}.json").write_text(json.dumps(document))
    return out_dir


def _one_caption(rng: np.random.Generator) -> tuple[Image.Image, list[str], list]:
    image, caption, objects = render_scene(rng)
    return image, [caption], objects


def write_shapes_dataset(
    out_dir: Path,
    n: int,
    seed: int = 0,
    val_fraction: float = 0.2,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write `n` scenes as PNGs plus COCO caption JSON per split; the last ones go to val."""
    return write_coco_set(
        out_dir, n, seed, val_fraction, _one_caption, SHAPES_DESCRIPTION, progress
    )
