"""Synthetic COCO-format captioning data, harder than the shapes set: two groups of objects.

The scenes set is a harder sibling of the shapes set (`model.shapes`): each 299×299 image holds
3 or 4 filled shapes in two groups, on the same noisy near-white background. A group is 1 to 3
objects of one colour, one shape and one size class (small: 28–40 px, large: 64–84 px); the two
groups differ in colour, shape or size, and one group lies entirely left of, right of, above or
below the other. Each image has three reference captions, e.g. "two small red circles above a
large blue square", "a large blue square below two small red circles" and "two red circles
above a blue square". Make one with `captioner data scenes OUT --n 1500 --seed 0`.

Caption grammar (one phrase per group, the canonical caption names group 0 first):

    caption  = phrase relation phrase
    phrase   = count [size] [colour] noun
    count    = "a" | "two" | "three"                  (objects in the group)
    size     = "small" | "large"
    colour   = "red" | "green" | "blue" | "yellow" | "purple"
    noun     = "circle" | "square" | "triangle"       (after "a")
             | "circles" | "squares" | "triangles"    (after "two" or "three")
    relation = "left of" | "right of" | "above" | "below"

Reference rule, the same for every image (annotation k of image i has id 3 * i + k):

0. canonical: group 0, the relation, group 1, all words present;
1. inverse: group 1, the inverse relation (left of <-> right of, above <-> below), group 0;
2. short: the canonical order without the size words, or, when size is all that tells the two
   groups apart (same colour and shape), without the colour words instead.

Layout: every object of group 0 lies on the relation's side of every object of group 1, at
least 10 px apart, while the two groups' extents overlap across that axis, so exactly one of the
four relations holds; objects keep 4 px apart and 8 px from the image edge.

Each image record's `objects` lists group 0's objects, then group 1's, each with `color`,
`shape`, `bbox` (x, y, w, h), `size` ("small" or "large") and `group` (0 or 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from model.shapes import (
    BORDER,
    COLORS,
    GAP,
    SHAPES,
    ShapeObject,
    background,
    draw_object,
    write_coco_set,
)

DESCRIPTION = "Synthetic groups of coloured shapes with relations"

SIZES: dict[str, tuple[int, int]] = {"small": (28, 40), "large": (64, 84)}  # side px, inclusive
COUNT_WORDS: tuple[str, ...] = ("a", "two", "three")  # COUNT_WORDS[n - 1] names n objects
PLURALS: dict[str, str] = {shape: f"{shape}s" for shape in SHAPES}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
INVERSE: dict[str, str] = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}
GROUP_COUNTS: tuple[tuple[int, int], ...] = ((1, 2), (2, 1), (1, 3), (3, 1), (2, 2))

_SPACING = 4  # minimum empty pixels between two objects of one group, so they never touch
_TRIES = 50  # random positions tried per object before the whole layout is drawn again
_LAYOUTS = 1000  # layouts tried before giving up (a few are enough in practice)
_MIN_SIZE = 3 * SIZES["large"][1] + 2 * (BORDER + _SPACING)  # three large objects in a row


@dataclass(frozen=True)
class Group:
    """Objects of one colour, shape and size class, named together by one caption phrase."""

    count: int  # 1..3
    size: str  # a key of SIZES
    color: str
    shape: str

    def phrase(self, sizes: bool = True, colors: bool = True) -> str:
        """The noun phrase naming the group, optionally without its size or colour word."""
        noun = self.shape if self.count == 1 else PLURALS[self.shape]
        words = [COUNT_WORDS[self.count - 1], self.size if sizes else None]
        words += [self.color if colors else None, noun]
        return " ".join(word for word in words if word)


@dataclass(frozen=True)
class SceneObject(ShapeObject):
    """One object of a scene: a ShapeObject plus its size class and its group (0 or 1)."""

    size: str
    group: int


def captions_for(groups: list[Group], relation: str) -> list[str]:
    """The three reference captions: canonical, inverse order, short (see the module docstring)."""
    first, second = groups
    only_size = (first.color, first.shape) == (second.color, second.shape)
    short = {"colors": False} if only_size else {"sizes": False}
    return [
        f"{first.phrase()} {relation} {second.phrase()}",
        f"{second.phrase()} {INVERSE[relation]} {first.phrase()}",
        f"{first.phrase(**short)} {relation} {second.phrase(**short)}",
    ]


def _pick_groups(rng: np.random.Generator) -> list[Group]:
    """Two groups whose (colour, shape, size) differ in at least one of the three."""
    kinds = list(product(COLORS, SHAPES, SIZES))
    first, second = rng.choice(len(kinds), size=2, replace=False)
    counts = GROUP_COUNTS[int(rng.integers(len(GROUP_COUNTS)))]
    return [
        Group(count, size, color, shape)
        for count, (color, shape, size) in zip(counts, (kinds[first], kinds[second]), strict=True)
    ]


def _sides(rng: np.random.Generator, group: Group) -> list[int]:
    """A random side length in the group's size class for each of its objects."""
    lo, hi = SIZES[group.size]
    return [int(rng.integers(lo, hi + 1)) for _ in range(group.count)]


def _apart(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """Whether two squares (main, cross, side) keep at least _SPACING pixels between them."""
    return any(
        a[axis] + a[2] + _SPACING <= b[axis] or b[axis] + b[2] + _SPACING <= a[axis]
        for axis in (0, 1)
    )


def _place_group(
    rng: np.random.Generator, sides: list[int], span: tuple[int, int], size: int
) -> list[tuple[int, int, int]] | None:
    """(main, cross, side) per object, main within `span` [lo, hi); None when they do not fit."""
    placed: list[tuple[int, int, int]] = []
    for side in sides:
        for _ in range(_TRIES):
            main = int(rng.integers(span[0], span[1] - side + 1))
            cross = int(rng.integers(BORDER, size - BORDER - side + 1))
            if all(_apart((main, cross, side), other) for other in placed):
                placed.append((main, cross, side))
                break
        else:
            return None
    return placed


def _spans(
    rng: np.random.Generator, sides: list[list[int]], first_low: bool, size: int
) -> list[tuple[int, int]]:
    """Main-axis spans [lo, hi) of groups 0 and 1, at least GAP apart around a random split."""
    low, high = (sides[0], sides[1]) if first_low else (sides[1], sides[0])
    half = GAP // 2
    split = int(rng.integers(BORDER + max(low) + half, size - BORDER - max(high) - half + 1))
    spans = [(BORDER, split - half), (split + half, size - BORDER)]
    return spans if first_low else spans[::-1]


def _cross_overlap(layout: list[list[tuple[int, int, int]]]) -> bool:
    """Whether the groups' extents overlap across the relation axis (so only one relation holds)."""
    lo = [min(cross for _, cross, _ in group) for group in layout]
    hi = [max(cross + side for _, cross, side in group) for group in layout]
    return lo[0] < hi[1] and lo[1] < hi[0]


def _layout(
    rng: np.random.Generator, groups: list[Group], relation: str, size: int
) -> list[list[tuple[int, int, int]]]:
    """(main, cross, side) of every object, per group; group 0 on the relation's side."""
    sides = [_sides(rng, group) for group in groups]
    for _ in range(_LAYOUTS):
        spans = _spans(rng, sides, relation in ("left of", "above"), size)
        layout = [_place_group(rng, s, span, size) for s, span in zip(sides, spans, strict=True)]
        if None not in layout and _cross_overlap(layout):
            return layout
    raise RuntimeError(f"no layout found for {groups} in {_LAYOUTS} tries")


def render_scene(
    rng: np.random.Generator, size: int = 299
) -> tuple[Image.Image, list[str], list[SceneObject]]:
    """Draw one scene; returns the image, its three reference captions and its objects."""
    if size < _MIN_SIZE:
        raise ValueError(f"size must be at least {_MIN_SIZE}")
    relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
    groups = _pick_groups(rng)
    layout = _layout(rng, groups, relation, size)
    horizontal = relation in ("left of", "right of")  # the relation separates along x
    objects = []
    for index, (group, placed) in enumerate(zip(groups, layout, strict=True)):
        for main, cross, side in placed:
            x, y = (main, cross) if horizontal else (cross, main)
            bbox = (float(x), float(y), float(side), float(side))
            objects.append(SceneObject(group.color, group.shape, bbox, group.size, index))
    image = background(rng, size)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        draw_object(draw, obj)
    return image, captions_for(groups, relation), objects


def write_scenes_dataset(
    out_dir: Path,
    n: int,
    seed: int = 0,
    val_fraction: float = 0.2,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write `n` scenes as PNGs plus COCO caption JSON per split; the last ones go to val."""
    return write_coco_set(out_dir, n, seed, val_fraction, render_scene, DESCRIPTION, progress)
