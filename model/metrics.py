"""Caption metrics (BLEU-1..4, CIDEr-D, exact match) and attention localisation on shape scenes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from core.formats import CAPTION_METRICS
from model.shapes import COLORS, SHAPES, ShapeObject
from model.vocab import standardize


def _normalise(text: str) -> str:
    """Standardised caption re-joined with single spaces (what the scorers tokenise)."""
    return " ".join(standardize(text))


def caption_scores(
    references: dict[str, list[str]], predictions: dict[str, str]
) -> dict[str, float]:
    """BLEU-1..4, CIDEr-D and exact match of `predictions` against their `references`."""
    if not predictions:
        raise ValueError("no predictions to score")
    missing = [key for key in predictions if not references.get(key)]
    if missing:
        raise KeyError(f"no references for {len(missing)} prediction(s), e.g. {missing[0]!r}")
    gts = {key: [_normalise(ref) for ref in references[key]] for key in predictions}
    res = {key: [_normalise(text)] for key, text in predictions.items()}
    # verbose=0: Bleu prints its n-gram totals to stdout otherwise.
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    exact = np.mean([res[key][0] in gts[key] for key in predictions])
    return dict(zip(CAPTION_METRICS, map(float, [*bleu, cider, exact]), strict=True))


def region_mask(bbox: Sequence[float], image_size: tuple[int, int], grid: int = 8) -> np.ndarray:
    """(grid*grid,) bool mask, row-major, of the attention cells that overlap bbox (x, y, w, h)."""
    x, y, w, h = (float(v) for v in bbox)
    width, height = image_size
    col_edges = np.arange(grid + 1) * (width / grid)  # (grid+1,)
    row_edges = np.arange(grid + 1) * (height / grid)  # (grid+1,)
    # Strict inequalities: a box that only touches a cell's edge does not overlap that cell.
    cols = (col_edges[:-1] < x + w) & (col_edges[1:] > x)  # (grid,)
    rows = (row_edges[:-1] < y + h) & (row_edges[1:] > y)  # (grid,)
    return np.outer(rows, cols).reshape(-1)  # (grid, grid) -> (grid*grid,)


def _fields(obj: Mapping | ShapeObject) -> tuple[str, str, Sequence[float]]:
    """(colour, shape, bbox) of an object given as a JSON dict or a ShapeObject."""
    if isinstance(obj, ShapeObject):
        return obj.color, obj.shape, obj.bbox
    return obj["color"], obj["shape"], obj["bbox"]


def _phrases(words: list[str]) -> list[tuple[str | None, str | None]]:
    """(colour, shape) of each noun phrase; a phrase ends at its shape word.

    The colour is the last colour word in the phrase (the adjective next to the noun); a
    trailing phrase without a shape word gets shape None.
    """
    phrases: list[tuple[str | None, str | None]] = []
    color = None
    for word in words:
        if word in COLORS:
            color = word
        elif word in SHAPES:
            phrases.append((color, word))
            color = None
    if color is not None:
        phrases.append((color, None))
    return phrases


def _referent(
    phrase: tuple[str | None, str | None], k: int, objects: Sequence[Mapping | ShapeObject]
) -> Mapping | ShapeObject | None:
    """The object phrase k names, or None when it names none of them."""
    referents = [obj for obj in objects if _fields(obj)[:2] == phrase]
    if len(referents) == 1:
        return referents[0]
    if len(referents) > 1 and k < len(objects):
        return objects[k]
    return None


def localization_scores(
    words: list[str],
    attention: np.ndarray,
    objects: Sequence[Mapping | ShapeObject],
    image_size: tuple[int, int],
) -> list[float]:
    """Share of attention inside the named object, for every colour or shape word."""
    attention = np.asarray(attention, dtype=np.float64)  # (T, grid*grid)
    grid = int(round(np.sqrt(attention.shape[-1]))) if attention.ndim == 2 else 0
    if attention.ndim != 2 or attention.shape[0] != len(words) or grid * grid != attention.shape[1]:
        raise ValueError(f"attention {attention.shape} must be (len(words), grid*grid)")
    words = [word.lower() for word in words]
    phrases = _phrases(words)
    scores = []
    shapes_before = 0
    for word, row in zip(words, attention, strict=True):
        k = shapes_before  # phrase index: shape words strictly before this word
        shapes_before += word in SHAPES
        if word not in COLORS and word not in SHAPES:
            continue
        referent = _referent(phrases[k], k, objects)
        if referent is None:
            continue
        mask = region_mask(_fields(referent)[2], image_size, grid)
        total = row.sum()
        # Normalised by the row's total so rows that do not sum exactly to 1 still score in 0..1.
        scores.append(float(row[mask].sum() / total) if total > 0 else 0.0)
    return scores


def localization(per_image_scores: Iterable[list[float]]) -> float | None:
    """Mean over all scored words of all images; None when no word was scored."""
    flat = [score for scores in per_image_scores for score in scores]
    return float(np.mean(flat)) if flat else None
