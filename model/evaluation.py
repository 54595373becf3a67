"""Scores for a decoder on a split: BLEU-1…4, CIDEr-D, exact match and attention localisation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model.data import Example
from model.inference import CaptionResult, Decoding
from model.scores import caption_scores, localization, localization_scores


def caption_features(
    decoding: Decoding, features: np.ndarray, beam_size: int = 1, batch_size: int = 64
) -> list[CaptionResult]:
    """Captions for cached features (N, 64, 2048), decoded in batches."""
    results: list[CaptionResult] = []
    for start in range(0, len(features), batch_size):
        batch = np.asarray(features[start : start + batch_size], dtype=np.float32)
        results += decoding.caption_features(batch, beam_size)
    return results


def score(examples: Sequence[Example], results: Sequence[CaptionResult]) -> dict[str, float | None]:
    """Caption metrics against the references, plus localisation where objects are known."""
    references = {e.image_id: list(e.captions) for e in examples}
    predictions = {e.image_id: r.text for e, r in zip(examples, results, strict=True)}
    scores: dict[str, float | None] = dict(caption_scores(references, predictions))
    located = [
        localization_scores(r.tokens, r.attention, e.objects, e.size or (299, 299))
        for e, r in zip(examples, results, strict=True)
        if e.objects
    ]
    scores["localization"] = localization(located) if located else None
    return scores
