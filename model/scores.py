"""Caption metrics (BLEU-1..4, CIDEr-D, exact match) and attention localisation on shape scenes.

Localisation scores each colour or shape word by the share of its attention inside what its
noun phrase names: one object on the shapes set, the union of one group's boxes on the scenes
set (objects that carry a `group`), where plural nouns count and size words help pick the group.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from core.formats import CAPTION_METRICS
from model.scenes import PLURALS, SIZES
from model.shapes import COLORS, SHAPES, ShapeObject
from model.vocab import standardize

# Scenes-set nouns, singular and plural, mapped to the singular shape name.
_NOUNS = {**{shape: shape for shape in SHAPES}, **{plural: s for s, plural in PLURALS.items()}}


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
    exact = np.mean([res[key][0] in gts[key] for key in predictions])  # as exact_match, once
    return dict(zip(CAPTION_METRICS, map(float, [*bleu, cider, exact]), strict=True))


def exact_match(references: Sequence[str], prediction: str) -> bool:
    """Whether the prediction equals one of the references, once both are standardised."""
    return _normalise(prediction) in {_normalise(ref) for ref in references}


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


def _object_targets(words: list[str], objects: Sequence[Mapping | ShapeObject]) -> list[list]:
    """Per word, the bbox of the object it names as [bbox], or [] for words not scored."""
    phrases = _phrases(words)
    targets: list[list] = []
    shapes_before = 0
    for word in words:
        k = shapes_before  # phrase index: shape words strictly before this word
        shapes_before += word in SHAPES
        referent = None
        if word in COLORS or word in SHAPES:
            referent = _referent(phrases[k], k, objects)
        targets.append([] if referent is None else [_fields(referent)[2]])
    return targets


def _attribute(obj: Mapping | ShapeObject, name: str) -> object:
    """An object's field by name (None when absent), from a JSON dict or a dataclass."""
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def _groups(objects: Sequence[Mapping | ShapeObject]) -> list[list] | None:
    """Objects per `group` id in id order; None when some object has no group (shapes set)."""
    ids = [_attribute(obj, "group") for obj in objects]
    if not ids or None in ids:
        return None
    return [[obj for obj, i in zip(objects, ids, strict=True) if i == g] for g in sorted(set(ids))]


def _group_phrases(words: list[str]) -> list[dict[str, str | None]]:
    """Colour, size and singular shape of each noun phrase, which ends at its (plural) noun.

    The last colour and size word before the noun count; a trailing phrase without a noun gets
    shape None, so that phrases[k] exists for every word.
    """
    phrases: list[dict[str, str | None]] = []
    current: dict[str, str | None] = {"color": None, "size": None}
    for word in words:
        if word in COLORS:
            current["color"] = word
        elif word in SIZES:
            current["size"] = word
        elif word in _NOUNS:
            phrases.append({**current, "shape": _NOUNS[word]})
            current = {"color": None, "size": None}
    return [*phrases, {**current, "shape": None}]


def _group_referent(phrase: dict[str, str | None], k: int, groups: list[list]) -> list | None:
    """The group phrase k names, matched on the words it has (by position only when that ties)."""
    if phrase["shape"] is None:
        return None
    matches = [
        i
        for i, group in enumerate(groups)
        if all(v is None or _attribute(group[0], key) == v for key, v in phrase.items())
    ]
    if len(matches) == 1:
        return groups[matches[0]]
    return groups[k] if k in matches else None


def _group_targets(words: list[str], groups: list[list]) -> list[list]:
    """Per word, the bboxes of the group it names, or [] for words not scored."""
    phrases = _group_phrases(words)
    targets: list[list] = []
    nouns_before = 0
    for word in words:
        k = nouns_before  # phrase index: nouns strictly before this word
        nouns_before += word in _NOUNS
        group = None
        if word in COLORS or word in _NOUNS:
            group = _group_referent(phrases[k], k, groups)
        targets.append([] if group is None else [_fields(obj)[2] for obj in group])
    return targets


def localization_scores(
    words: list[str],
    attention: np.ndarray,
    objects: Sequence[Mapping | ShapeObject],
    image_size: tuple[int, int],
) -> list[float]:
    """Share of attention inside the named object or group, for every colour or shape word."""
    attention = np.asarray(attention, dtype=np.float64)  # (T, grid*grid)
    grid = int(round(np.sqrt(attention.shape[-1]))) if attention.ndim == 2 else 0
    if attention.ndim != 2 or attention.shape[0] != len(words) or grid * grid != attention.shape[1]:
        raise ValueError(f"attention {attention.shape} must be (len(words), grid*grid)")
    words = [word.lower() for word in words]
    groups = _groups(objects)
    targets = _object_targets(words, objects) if groups is None else _group_targets(words, groups)
    scores = []
    for boxes, row in zip(targets, attention, strict=True):
        if not boxes:
            continue
        masks = [region_mask(bbox, image_size, grid) for bbox in boxes]  # each (grid*grid,)
        mask = np.logical_or.reduce(masks)  # (grid*grid,) the union of the boxes' cells
        total = row.sum()
        # Normalised by the row's total so rows that do not sum exactly to 1 still score in 0..1.
        scores.append(float(row[mask].sum() / total) if total > 0 else 0.0)
    return scores


def localization(per_image_scores: Iterable[list[float]]) -> float | None:
    """Mean over all scored words of all images; None when no word was scored."""
    flat = [score for scores in per_image_scores for score in scores]
    return float(np.mean(flat)) if flat else None
