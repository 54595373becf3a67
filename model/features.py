"""Encoder features for a dataset, computed once per encoder fingerprint and cached on disk."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from model.data import Example
from model.encoder import Encoder
from model.images import decode_image


def cache_path(cache_dir: Path, encoder: Encoder, examples: Sequence[Example]) -> Path:
    """Where the features of these images under this encoder live."""
    digest = hashlib.sha256("\n".join(str(e.path) for e in examples).encode()).hexdigest()[:16]
    return Path(cache_dir) / encoder.fingerprint / f"{digest}.npy"


def extract_features(
    encoder: Encoder,
    examples: Sequence[Example],
    cache_dir: Path,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Features (N, 64, 2048) float16, read-only memmap, in the order of `examples`."""
    path = cache_path(cache_dir, encoder, examples)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        shape = (len(examples), 64, 2048)
        # float16 halves the cache; the relative error (1e-3) is far below feature noise.
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=shape)
        for start, images in _batches(examples, batch_size):
            out[start : start + len(images)] = encoder(images).numpy()
            if progress:
                progress(len(images))
        out.flush()
        del out
        partial.rename(path)  # a crash mid-way never leaves a half-written cache behind
    return np.load(path, mmap_mode="r")


def _batches(examples: Sequence[Example], batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    """Decoded image batches (B, 299, 299, 3), decoding the next batch while this one runs."""
    starts = range(0, len(examples), batch_size)

    def load(start: int) -> np.ndarray:
        batch = examples[start : start + batch_size]
        return np.stack([decode_image(e.path.read_bytes()) for e in batch])

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, starts[0]) if starts else None
        for i, start in enumerate(starts):
            images = pending.result()
            if i + 1 < len(starts):
                pending = pool.submit(load, starts[i + 1])
            yield start, images
