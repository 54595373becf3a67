"""The Transformer decoder of TensorFlow's captioning tutorial, with a key/value cache.

Each block is post-norm: causal self-attention, cross-attention to the 64 image cells, then a
feed-forward layer, each added to its input and layer-normalised. The per-word attention the
service returns is the last block's cross-attention averaged over its heads, a distribution over
the 64 cells like the GRU's. (The tutorial averages over every block too; on the shapes set the
first block's maps are diffuse and took the localisation score from 0.85 to 0.68.)
"""

from __future__ import annotations

import keras
import tensorflow as tf

from model.buffers import write_column
from model.config import ModelConfig

MAX_POSITIONS = 64  # word positions with an embedding: the longest caption it can emit


@keras.saving.register_keras_serializable(package="captioner")
class MultiHeadAttention(keras.layers.Layer):
    """Scaled dot-product attention with `heads` heads; keys and values can be made once."""

    def __init__(self, width: int, heads: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.width, self.heads = width, heads
        self.query = keras.layers.Dense(width, name="query")
        self.key = keras.layers.Dense(width, name="key")
        self.value = keras.layers.Dense(width, name="value")
        self.out = keras.layers.Dense(width, name="out")

    def split(self, x: tf.Tensor) -> tf.Tensor:
        """(B, T, D) → (B, H, T, D/H)."""
        batch, length = tf.shape(x)[0], tf.shape(x)[1]
        x = tf.reshape(x, (batch, length, self.heads, self.width // self.heads))
        return tf.transpose(x, (0, 2, 1, 3))

    def keys_values(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Keys and values (B, H, S, D/H) of the attended sequence x (B, S, D)."""
        return self.split(self.key(x)), self.split(self.value(x))

    def call(self, x, keys, values, mask=None):
        """Queries x (B, T, D) over keys/values (B, H, S, D/H); mask (…, T, S) True = may see.

        Returns the output (B, T, D) and the weights (B, H, T, S).
        """
        query = self.split(self.query(x)) / (self.width // self.heads) ** 0.5
        scores = tf.einsum("bhtd,bhsd->bhts", query, keys)
        if mask is not None:
            scores = tf.where(mask, scores, -1e9)
        weights = tf.nn.softmax(scores, axis=-1)
        context = tf.transpose(tf.einsum("bhts,bhsd->bhtd", weights, values), (0, 2, 1, 3))
        merged = tf.reshape(context, (tf.shape(x)[0], tf.shape(x)[1], self.width))
        return self.out(merged), weights

    def get_config(self) -> dict:
        return {**super().get_config(), "width": self.width, "heads": self.heads}


@keras.saving.register_keras_serializable(package="captioner")
class DecoderBlock(keras.layers.Layer):
    """Causal self-attention, cross-attention to the image, feed-forward; each add & norm."""

    def __init__(self, width: int, heads: int, ff_units: int, dropout: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.width, self.heads, self.ff_units, self.rate = width, heads, ff_units, dropout
        self.self_attention = MultiHeadAttention(width, heads, name="self_attention")
        self.cross_attention = MultiHeadAttention(width, heads, name="cross_attention")
        self.ff_in = keras.layers.Dense(ff_units, activation="relu", name="ff_in")
        self.ff_out = keras.layers.Dense(width, name="ff_out")
        self.norms = [keras.layers.LayerNormalization(name=f"norm{i}") for i in range(3)]
        self.dropout = keras.layers.Dropout(dropout)

    def call(self, x, memory, mask, training: bool = False):
        """A whole prefix x (B, T, D) at once: → x (B, T, D), cross weights (B, H, T, L)."""
        attended, _ = self.self_attention(x, *self.self_attention.keys_values(x), mask)
        return self.rest(x, attended, memory, training)

    def step(self, x, memory, cache, t):
        """Word t only, x (B, 1, D), its keys and values written into the cache (B, H, T, D/H)."""
        key, value = self.self_attention.keys_values(x)  # (B, H, 1, D/H)
        keys = write_column(cache[0], t, key[:, :, 0], 2)
        values = write_column(cache[1], t, value[:, :, 0], 2)
        seen = tf.range(keys.shape[2]) <= t  # (T,): the words so far, this one included
        attended, _ = self.self_attention(x, keys, values, seen)
        x, weights = self.rest(x, attended, memory, False)
        return x, weights, (keys, values)

    def rest(self, x, attended, memory, training: bool):
        """The blocks' common part after self-attention: add & norm, cross-attention, FF."""
        x = self.norms[0](x + self.dropout(attended, training=training))
        crossed, weights = self.cross_attention(x, *memory)
        x = self.norms[1](x + self.dropout(crossed, training=training))
        fed = self.ff_out(self.ff_in(x))
        return self.norms[2](x + self.dropout(fed, training=training)), weights

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "width": self.width,
            "heads": self.heads,
            "ff_units": self.ff_units,
            "dropout": self.rate,
        }


@keras.saving.register_keras_serializable(package="captioner")
class TransformerDecoder(keras.Model):
    """Word and position embeddings, `layers` decoder blocks and a dense layer to the vocabulary.

    Decoding state: with `cache` (the default) each block's self-attention keys and values
    (B, H, T, D/H), so a step computes only the new word; without it, the words so far (B, T),
    and every step recomputes the whole prefix (kept to measure what the cache saves).
    """

    def __init__(
        self,
        vocab_size: int,
        width: int = 256,
        layers: int = 2,
        heads: int = 2,
        ff_units: int = 1024,
        dropout: float = 0.1,
        locations: int = 64,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.vocab_size, self.width, self.num_layers, self.heads = vocab_size, width, layers, heads
        self.ff_units, self.rate, self.locations = ff_units, dropout, locations
        self.cache = True
        self.image_projection = keras.layers.Dense(width, "relu", name="image_projection")
        self.cells = keras.layers.Embedding(locations, width, name="cells")  # where each cell is
        self.embedding = keras.layers.Embedding(vocab_size, width, name="embedding")
        self.positions = keras.layers.Embedding(MAX_POSITIONS, width, name="positions")
        self.blocks = [
            DecoderBlock(width, heads, ff_units, dropout, name=f"block{i}") for i in range(layers)
        ]
        self.dropout = keras.layers.Dropout(dropout)
        self.output_layer = keras.layers.Dense(vocab_size, name="output")

    @classmethod
    def from_model_config(cls, config: ModelConfig) -> TransformerDecoder:
        """A decoder with the sizes of `config`, built (weights created)."""
        decoder = cls(
            config.vocab_size,
            config.embedding_dim,
            config.layers,
            config.heads,
            config.ff_units,
            config.dropout,
            config.num_locations,
        )
        decoder(tf.zeros((1, config.num_locations, config.feature_dim)), tf.zeros((1, 1), tf.int32))
        return decoder

    def encode(self, features: tf.Tensor) -> tuple:
        """Standardised features (B, L, F) → each block's cross-attention keys and values
        (B, H, L, D/H), computed once per image."""
        cells = self.image_projection(features) + self.cells(tf.range(self.locations))
        return tuple(block.cross_attention.keys_values(cells) for block in self.blocks)

    def initial_state(self, batch_size, max_length: int):
        """Empty caches, one (keys, values) pair per block; or no words yet, without the cache."""
        if max_length > MAX_POSITIONS:
            raise ValueError(f"the Transformer emits at most {MAX_POSITIONS} words")
        if not self.cache:
            return tf.zeros((batch_size, max_length), tf.int32)
        empty = tf.zeros((batch_size, self.heads, max_length, self.width // self.heads))
        return tuple((empty, empty) for _ in self.blocks)

    def step(self, tokens, memory, state, t):
        """Word t of every sequence: tokens (B,) → logits (B, V), state, weights (B, L)."""
        if not self.cache:
            return self._step_uncached(tokens, memory, state, t)
        x = self.embedding(tokens)[:, None, :] + self.positions(t)  # (B, 1, D)
        caches, maps = [], []
        for block, memory_kv, cache in zip(self.blocks, memory, state, strict=True):
            x, weights, cache = block.step(x, memory_kv, cache, t)
            caches.append(cache)
            maps.append(weights)
        return self.output_layer(x[:, 0]), tuple(caches), self.combine(maps)[:, 0]

    def _step_uncached(self, tokens, memory, words, t):
        words = write_column(words, t, tokens, 1)  # (B, T)
        logits, weights = self.decode(memory, words)
        return logits[:, t], words, weights[:, t]

    def decode(self, memory, tokens, training: bool = False):
        """Teacher forcing on encoded images: tokens (B, T) → logits (B, T, V), attention
        (B, T, L)."""
        length = tokens.shape[1]
        if length > MAX_POSITIONS:
            raise ValueError(f"the Transformer reads at most {MAX_POSITIONS} words a caption")
        x = self.embedding(tokens) + self.positions(tf.range(length))
        x = self.dropout(x, training=training)
        causal = tf.linalg.band_part(tf.ones((length, length), tf.bool), -1, 0)  # (T, T)
        maps = []
        for block, memory_kv in zip(self.blocks, memory, strict=True):
            x, weights = block(x, memory_kv, causal, training=training)
            maps.append(weights)
        return self.output_layer(x), self.combine(maps)

    @staticmethod
    def combine(maps: list[tf.Tensor]) -> tf.Tensor:
        """Each block's cross-attention (B, H, T, L) → the last one's mean over heads (B, T, L)."""
        return tf.reduce_mean(maps[-1], axis=1)

    def call(self, features: tf.Tensor, tokens: tf.Tensor, training: bool = False):
        """Teacher forcing: features (B, L, F), tokens (B, T) → logits (B, T, V), attention
        (B, T, L)."""
        return self.decode(self.encode(features), tokens, training)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "width": self.width,
            "layers": self.num_layers,
            "heads": self.heads,
            "ff_units": self.ff_units,
            "dropout": self.rate,
            "locations": self.locations,
        }
