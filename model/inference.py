"""Captions with attention for a batch of images, decoded inside one compiled graph."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import tensorflow as tf

from model.bundle import Bundle
from model.encoder import Encoder
from model.images import IMAGE_SIZE, decode_image
from model.limits import Limits, OodScore
from model.search import SearchOutput, beam_search, greedy_search
from model.vocab import END_ID


@dataclass(frozen=True)
class CaptionResult:
    """One image's caption: words, their log-probabilities and attention (T, 64)."""

    text: str
    tokens: list[str]  # emitted words, <end> excluded
    log_probs: list[float]  # one per word
    attention: np.ndarray  # (T, 64) float32, one row per word, each row sums to 1
    ended: bool  # False when max_length cut the caption before <end>
    end_log_prob: float | None  # log-probability of <end>, when emitted
    # From the bundle's limits (None for a bundle made before them): the probability that the
    # caption is right, and how unlike the training images the image is.
    confidence: float | None = None
    ood: OodScore | None = None

    @property
    def score(self) -> float:
        """Log-probability of the whole caption, <end> included."""
        return float(sum(self.log_probs) + (self.end_log_prob or 0.0))


@dataclass(frozen=True)
class Sampling:
    """Per image: a temperature (0: the most likely word) and the seed of its noise."""

    temperatures: np.ndarray  # (B,) float32, ≥ 0
    seeds: np.ndarray  # (B,) int32

    @classmethod
    def greedy(cls, batch_size: int) -> Sampling:
        """No sampling for any image."""
        return cls(np.zeros(batch_size, np.float32), np.zeros(batch_size, np.int32))

    @classmethod
    def of(cls, pairs: Sequence[tuple[float, int]]) -> Sampling:
        """From (temperature, seed) per image; seeds wrap to 32 bits."""
        temperatures = np.array([t for t, _ in pairs], np.float32).reshape(-1)
        seeds = np.array([s for _, s in pairs], np.int64).reshape(-1) & 0xFFFFFFFF
        return cls(temperatures, seeds.astype(np.uint32).view(np.int32))

    def padded(self, padding: int) -> tuple[np.ndarray, np.ndarray]:
        """Temperatures and seeds with `padding` greedy rows added, to match a padded batch."""
        return np.pad(self.temperatures, (0, padding)), np.pad(self.seeds, (0, padding))


def bucket(batch_size: int) -> int:
    """The padded batch size: a power of two up to 64, then a multiple of 64."""
    if batch_size <= 64:
        return 1 << max(batch_size - 1, 0).bit_length()
    return -(-batch_size // 64) * 64


class Decoding:
    """A trained decoder with its normalisation: encoder features → captions.

    Each (beam size, max length) pair compiles once, with XLA by default; batches are padded to
    `bucket` sizes so XLA compiles a handful of shapes, not one per batch size.
    """

    def __init__(self, bundle: Bundle, length_penalty: float = 0.6, xla: bool = True) -> None:
        self.bundle = bundle
        self.length_penalty = length_penalty
        self.xla = xla
        self._mean = tf.constant(bundle.norm.mean)  # (F,)
        self._std = tf.constant(bundle.norm.std)
        self._compiled: dict[tuple[int, int], tf.types.experimental.GenericFunction] = {}

    def search(
        self,
        features,
        beam_size: int = 1,
        max_length: int | None = None,
        sampling: Sampling | None = None,
    ) -> SearchOutput:
        """Run the compiled search on raw encoder features (B, 64, 2048); `sampling` gives each
        image a temperature and a seed (greedy search only: beams are never sampled)."""
        if beam_size < 1:
            raise ValueError("beam_size must be at least 1")
        length = max_length or self.bundle.config.max_length
        if length < 1:
            raise ValueError("max_length must be at least 1")
        features = tf.convert_to_tensor(features, tf.float32)
        batch = features.shape[0]
        sampling = sampling or Sampling.greedy(batch)
        if beam_size > 1 and np.any(sampling.temperatures > 0):
            raise ValueError("a temperature above 0 samples one caption: use beam_size 1")
        if (beam_size, length) not in self._compiled:
            self._compiled[beam_size, length] = self._compile(beam_size, length)
        padding = bucket(batch) - batch
        padded = tf.pad(features, [[0, padding], [0, 0], [0, 0]])  # (bucket, 64, 2048)
        output = self._compiled[beam_size, length](padded, *sampling.padded(padding))
        return SearchOutput(*(tensor[:batch] for tensor in output))

    def _compile(self, beam_size: int, max_length: int):
        config = self.bundle.config
        spec = [
            tf.TensorSpec((None, config.num_locations, config.feature_dim), tf.float32),
            tf.TensorSpec((None,), tf.float32),
            tf.TensorSpec((None,), tf.int32),
        ]

        def run(features, temperatures, seeds):
            standardised = (features - self._mean) / self._std
            if beam_size == 1:
                decoder = self.bundle.decoder
                return greedy_search(decoder, standardised, max_length, temperatures, seeds)
            return beam_search(
                self.bundle.decoder, standardised, max_length, beam_size, self.length_penalty
            )

        return tf.function(run, input_signature=spec, jit_compile=self.xla)

    def warm_up(self, max_batch: int, beam_size: int = 1, max_length: int | None = None) -> None:
        """Compile every batch bucket up to `max_batch`, so no request waits for XLA."""
        config = self.bundle.config
        size = 1
        while size <= bucket(max_batch):
            features = np.zeros((size, config.num_locations, config.feature_dim))
            self.search(features, beam_size, max_length)
            size = bucket(size + 1)

    def caption_features(
        self,
        features,
        beam_size: int = 1,
        max_length: int | None = None,
        sampling: Sampling | None = None,
    ) -> list[CaptionResult]:
        """Captions for encoder features (B, 64, 2048)."""
        output = self.search(features, beam_size, max_length, sampling)
        return to_results(output, self.bundle.vocab.tokens)


def to_results(output: SearchOutput, words: Sequence[str]) -> list[CaptionResult]:
    """Cut each sequence at its first <end> and look its words up."""
    tokens, log_probs = output.tokens.numpy(), output.log_probs.numpy()
    attention = output.attention.numpy()
    results = []
    for ids, lps, alphas in zip(tokens, log_probs, attention, strict=True):
        ends = np.flatnonzero(ids == END_ID)
        n = int(ends[0]) if len(ends) else len(ids)
        text_tokens = [words[i] for i in ids[:n]]
        results.append(
            CaptionResult(
                text=" ".join(text_tokens),
                tokens=text_tokens,
                log_probs=[float(x) for x in lps[:n]],
                attention=alphas[:n],
                ended=bool(len(ends)),
                end_log_prob=float(lps[n]) if len(ends) else None,
            )
        )
    return results


def with_limits(
    results: list[CaptionResult], features, limits: Limits | None
) -> list[CaptionResult]:
    """The results with their confidence and OOD score, from raw features (B, 64, 2048)."""
    if limits is None:
        return results
    confidence = limits.confidence(np.array([r.score for r in results]))
    pooled = tf.reduce_mean(features, axis=1).numpy()  # (B, 2048)
    return [
        replace(result, confidence=float(c), ood=ood)
        for result, c, ood in zip(results, confidence, limits.ood(pooled), strict=True)
    ]


class Captioner:
    """A bundle on a matching encoder: preprocessed images (B, 299, 299, 3) → captions."""

    def __init__(self, bundle: Bundle, encoder: Encoder, length_penalty: float = 0.6) -> None:
        bundle.check_encoder(encoder.info)
        self.bundle = bundle
        self.encoder = encoder
        self.decoding = Decoding(bundle, length_penalty)

    def caption_batch(
        self,
        images: np.ndarray,
        beam_size: int = 1,
        max_length: int | None = None,
        sampling: Sampling | None = None,
    ) -> list[CaptionResult]:
        """Caption preprocessed images (B, 299, 299, 3) float32 in one batched pass."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise ValueError(f"images must be (B, 299, 299, 3), not {images.shape}")
        if len(images) == 0:
            return []
        features = self.encoder(images)  # (B, 64, 2048), stays a tensor
        results = self.decoding.caption_features(features, beam_size, max_length, sampling)
        return with_limits(results, features, self.bundle.limits)

    def caption_bytes(self, images: Sequence[bytes], **options) -> list[CaptionResult]:
        """Decode image files (raising ImageError for bad bytes) and caption them."""
        return self.caption_batch(np.stack([decode_image(data) for data in images]), **options)

    def warm_up(self, max_batch: int = 1, max_length: int | None = None) -> None:
        """Run the encoder once and compile the decoder for every batch size up to `max_batch`."""
        self.caption_batch(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32))
        self.decoding.warm_up(max_batch, max_length=max_length)
