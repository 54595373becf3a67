"""A stand-in for the captioner, of fixed cost per batch: for benchmarks and tests only.

It measures what the service costs around the model (the control plane), as if the model ran
on a fast GPU. It sleeps, then returns the same caption for every image, with attention spread
evenly over the 64 cells. The worker uses it only when `bench_standin_model_ms` is set.
"""

from __future__ import annotations

import time

import numpy as np

from model.inference import CaptionResult

STANDIN_TOKENS = ["a", "stand-in", "caption"]


class StandInCaptioner:
    """`caption_batch` that costs `cost_ms` per batch, whatever its size, and sees nothing."""

    def __init__(self, cost_ms: float) -> None:
        self.cost_s = cost_ms / 1000

    def caption_batch(
        self, images: np.ndarray, beam_size: int = 1, max_length: int | None = None, sampling=None
    ) -> list[CaptionResult]:
        """One fixed caption per image (B, 299, 299, 3), after sleeping the batch's cost."""
        time.sleep(self.cost_s)
        tokens = STANDIN_TOKENS[: max_length or len(STANDIN_TOKENS)]
        attention = np.full((len(tokens), 64), 1 / 64, dtype=np.float32)  # (T, 64)
        return [
            CaptionResult(
                " ".join(tokens), list(tokens), [-0.1] * len(tokens), attention, True, -0.1
            )
            for _ in images
        ]
