"""Blob keys: where each job's files live in the one bucket (see DESIGN.md, blob layout)."""

from __future__ import annotations

import uuid


def image_key(job_id: uuid.UUID | str) -> str:
    """The original upload, byte for byte."""
    return f"images/{job_id}"


def attention_key(job_id: uuid.UUID | str) -> str:
    """The attention weights as a `.npy` array (T, 64) float16, one row per emitted word."""
    return f"attention/{job_id}.npy"


def attention_png_key(job_id: uuid.UUID | str) -> str:
    """The rendered per-word heat-map grid, cached after its first request."""
    return f"attention/{job_id}.png"
