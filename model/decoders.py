"""The decoder interface both architectures implement, and the one place that builds them.

Searches (model/search.py) and training (model/training.py) see only this interface:
- `encode(features)`: standardised features (B, L, F) → `memory`, a nest of tensors with the
  batch first, computed once per image (GRU: projected values and attention keys; Transformer:
  each block's cross-attention keys and values);
- `initial_state(batch, max_length)` → a nest of tensors with the batch first (GRU: its state;
  Transformer: its key/value cache), which beam search reorders along the batch;
- `step(tokens (B,), memory, state, t)` → logits (B, V), state, attention over cells (B, L);
- `decoder(features, tokens, training)` → logits (B, T, V), attention (B, T, L) by teacher forcing;
- `output_layer`: the Dense layer to the vocabulary; `vocab_size`.
"""

from __future__ import annotations

from typing import Any, Protocol

import keras
import tensorflow as tf

from model.config import ModelConfig
from model.layers import CaptionDecoder
from model.transformer import TransformerDecoder


class Decoder(Protocol):
    """What searches and training need of a decoder (see the module's docstring)."""

    vocab_size: int
    output_layer: keras.layers.Dense
    trainable_variables: list

    def encode(self, features: tf.Tensor) -> Any: ...
    def initial_state(self, batch_size, max_length: int) -> Any: ...
    def step(self, tokens: tf.Tensor, memory: Any, state: Any, t) -> tuple: ...
    def __call__(self, features, tokens, training: bool = False) -> tuple: ...


ARCHITECTURES = {"gru": CaptionDecoder, "transformer": TransformerDecoder}


def build_decoder(config: ModelConfig) -> Decoder:
    """A new decoder of `config`'s architecture and sizes, with its weights created."""
    return ARCHITECTURES[config.decoder].from_model_config(config)
