"""InceptionV3 feature extractor: images (B, 299, 299, 3) → features (B, 64, 2048)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from model.images import IMAGE_SIZE

IMAGENET = "imagenet"
DEFAULT_WEIGHTS = "seed:0"  # offline default: a fixed random init, identical in every process


@dataclass(frozen=True)
class EncoderInfo:
    """What a bundle records about the encoder it was trained on."""

    weights: str  # "imagenet", "seed:N" or a weights file path
    fingerprint: str  # sha256 of the weights, 16 hex digits


class Encoder:
    """InceptionV3 without its top; weights from ImageNet, a local file or a fixed seed."""

    def __init__(self, weights: str = DEFAULT_WEIGHTS) -> None:
        self.weights = weights
        self.model = build_inception(weights)
        self.fingerprint = fingerprint(self.model.get_weights())
        self._forward = tf.function(
            self._features,
            input_signature=[tf.TensorSpec((None, IMAGE_SIZE, IMAGE_SIZE, 3), tf.float32)],
        )

    @property
    def info(self) -> EncoderInfo:
        """This encoder's identity, as saved in bundles."""
        return EncoderInfo(self.weights, self.fingerprint)

    def _features(self, images: tf.Tensor) -> tf.Tensor:
        grid = self.model(images, training=False)  # (B, 8, 8, 2048)
        return tf.reshape(grid, (tf.shape(grid)[0], -1, grid.shape[-1]))  # (B, 64, 2048)

    def __call__(self, images: np.ndarray | tf.Tensor) -> tf.Tensor:
        """Features (B, 64, 2048) float32 for preprocessed images (B, 299, 299, 3)."""
        return self._forward(tf.convert_to_tensor(images, tf.float32))


def build_inception(weights: str) -> keras.Model:
    """InceptionV3 (include_top=False) with weights from `imagenet`, `seed:N` or a file path."""
    shape = (IMAGE_SIZE, IMAGE_SIZE, 3)
    if weights == IMAGENET:
        # Keras downloads the file once into ~/.keras/models, or finds it placed there.
        return keras.applications.InceptionV3(
            include_top=False, weights=IMAGENET, input_shape=shape
        )
    model = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=shape)
    if weights.startswith("seed:"):
        seed_weights(model, int(weights.removeprefix("seed:")))
    elif Path(weights).is_file():
        model.load_weights(weights)
    else:
        raise ValueError(f"encoder weights must be 'imagenet', 'seed:N' or a file, not {weights!r}")
    return model


def seed_weights(model: keras.Model, seed: int) -> None:
    """Glorot-uniform conv kernels from a NumPy seed: the same weights in every process."""
    # Keras' own initialisers depend on its RNG state and version; NumPy's PCG64 stream does not.
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel = layer.kernel  # (kh, kw, c_in, c_out)
            kh, kw, c_in, c_out = kernel.shape
            limit = np.sqrt(6.0 / (kh * kw * (c_in + c_out)))
            kernel.assign(rng.uniform(-limit, limit, kernel.shape).astype(np.float32))


def fingerprint(weights: list[np.ndarray]) -> str:
    """A short sha256 over every weight's shape and bytes, in order."""
    digest = hashlib.sha256()
    for array in weights:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]
