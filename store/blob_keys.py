"""Blob keys: every place a file lives in the one bucket, built here and nowhere else.

images/{job_id}                 a job's upload, byte for byte
images/packs/{pack_id}          a chunk of a batch's uploads, back to back (see store.images)
attention/{job_id}.npy          its attention weights (T, 64) float16 (jobs before
                                migration 0005; newer ones keep them in their row)
attention/{job_id}.png          the heat-map grid, rendered on first request, then cached
datasets/{dataset_id}/archive   an uploaded dataset, as uploaded (zip or tar)
feedback/{feedback_id}          the image a caption correction is about (a copy of the job's)
training/{run_id}/…             a training run's checkpoint folder, mirrored after each epoch
models/{version}/…              a registered model version's bundle folder
"""

from __future__ import annotations

import uuid


def image_key(job_id: uuid.UUID | str) -> str:
    """The original upload, byte for byte."""
    return f"images/{job_id}"


def pack_key(pack_id: uuid.UUID | str) -> str:
    """Several uploads of one batch, back to back; each job records its offset and length."""
    return f"images/packs/{pack_id}"


def attention_key(job_id: uuid.UUID | str) -> str:
    """The attention weights as a `.npy` array (T, 64) float16, one row per emitted word."""
    return f"attention/{job_id}.npy"


def attention_png_key(job_id: uuid.UUID | str) -> str:
    """The rendered per-word heat-map grid, cached after its first request."""
    return f"attention/{job_id}.png"


def feedback_image_key(feedback_id: uuid.UUID | str) -> str:
    """The image of one caption correction, copied from its job's upload."""
    return f"feedback/{feedback_id}"


def dataset_key(dataset_id: uuid.UUID | str) -> str:
    """An uploaded dataset's archive."""
    return f"datasets/{dataset_id}/archive"


def checkpoint_prefix(run_id: uuid.UUID | str) -> str:
    """The folder of a training run's checkpoints (its files are keys under it)."""
    return f"training/{run_id}/"


def bundle_prefix(version: str) -> str:
    """The folder of a model version's bundle ("v3")."""
    return f"models/{version}/"
