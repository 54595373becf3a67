"""How the CLI and the demo word a caption's limits: its confidence and, when the OOD score
flags its image, a warning (the numbers come from model/limits.py, directly or through the API)."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.resources import files
from typing import Any

PHOTO = "photos/astronaut.jpg"  # NASA, public domain: see captioner/photos/README.md


def ood_warning(score: float, threshold: float) -> str:
    """The warning printed beside a caption whose image is unlike the training images."""
    return (
        f"⚠ out of distribution: unlike the training images "
        f"(score {score:.0f} > threshold {threshold:.0f})"
    )


def limit_notes(confidence: float | None, ood: Mapping[str, Any] | None) -> str:
    """'  (confidence 93%)', then the warning if `ood` ({score, threshold, flagged}) is flagged;
    '' for a caption without either (a bundle made before them)."""
    notes = "" if confidence is None else f"  (confidence {confidence:.0%})"
    if ood and ood.get("flagged"):
        notes += f"  {ood_warning(ood['score'], ood['threshold'])}"
    return notes


def demo_photo() -> bytes:
    """The photo shipped in the package: a person, nothing like the shapes set."""
    return (files("captioner") / PHOTO).read_bytes()
