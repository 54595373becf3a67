"""The attention decoder of "Show, Attend and Tell": Bahdanau attention over a GRU cell."""

from __future__ import annotations

import keras
import tensorflow as tf

from model.config import ModelConfig


@keras.saving.register_keras_serializable(package="captioner")
class BahdanauAttention(keras.layers.Layer):
    """Additive attention (Bahdanau et al., 2015) of a query over image locations."""

    def __init__(self, units: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.image_side = keras.layers.Dense(units, name="image_side")  # the tutorial's W1
        self.query_side = keras.layers.Dense(units, name="query_side")  # W2
        self.score = keras.layers.Dense(1, name="score")  # V

    def project(self, values: tf.Tensor) -> tf.Tensor:
        """The image side of the score, computed once per image: (B, L, E) → (B, L, A)."""
        return self.image_side(values)

    def call(self, keys: tf.Tensor, values: tf.Tensor, query: tf.Tensor):
        """Context (B, E) and weights (B, L) for projected keys, values (B, L, E), query (B, U)."""
        hidden = tf.tanh(keys + self.query_side(query)[:, None, :])  # (B, L, A)
        weights = tf.nn.softmax(self.score(hidden)[..., 0], axis=1)  # (B, L)
        context = tf.einsum("bl,ble->be", weights, values)  # (B, E)
        return context, weights

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="captioner")
class CaptionDecoder(keras.Model):
    """Image projection, attention, GRU cell and two dense layers to the vocabulary."""

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 256,
        units: int = 512,
        attention_units: int = 512,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.vocab_size, self.embedding_dim = vocab_size, embedding_dim
        self.units, self.attention_units = units, attention_units
        self.image_projection = keras.layers.Dense(
            embedding_dim, activation="relu", name="image_projection"
        )  # the tutorial's CNN_Encoder
        self.attention = BahdanauAttention(attention_units, name="attention")
        self.embedding = keras.layers.Embedding(vocab_size, embedding_dim, name="embedding")
        self.cell = keras.layers.GRUCell(units, name="gru")
        self.fc1 = keras.layers.Dense(units, name="fc1")
        self.fc2 = keras.layers.Dense(vocab_size, name="fc2")

    @classmethod
    def from_model_config(cls, config: ModelConfig) -> CaptionDecoder:
        """A decoder with the sizes of `config`, built (weights created)."""
        decoder = cls(config.vocab_size, config.embedding_dim, config.units, config.attention_units)
        features = tf.zeros((1, config.num_locations, config.feature_dim))
        decoder(features, tf.zeros((1, 1), tf.int32))
        return decoder

    def encode(self, features: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Standardised features (B, L, F) → values (B, L, E) and attention keys (B, L, A)."""
        values = self.image_projection(features)
        return values, self.attention.project(values)

    @property
    def output_layer(self) -> keras.layers.Dense:
        """The last layer, to the vocabulary (its bias may start at the words' frequencies)."""
        return self.fc2

    def initial_state(self, batch_size, max_length: int | None = None) -> tf.Tensor:
        """The GRU's starting state (B, U); it needs no room per word."""
        return tf.zeros((batch_size, self.units))

    def recur(self, tokens, values, keys, state):
        """One step before the output layers: tokens (B,) → output (B, U), state, weights (B, L)."""
        context, weights = self.attention(keys, values, state)
        inputs = tf.concat([context, self.embedding(tokens)], axis=-1)  # (B, 2E)
        output, state = self.cell(inputs, state)
        return output, state, weights

    def logits(self, output: tf.Tensor) -> tf.Tensor:
        """Vocabulary logits (…, V) for GRU outputs (…, U)."""
        return self.fc2(self.fc1(output))

    def step(self, tokens, memory, state, t=None):
        """One decoding step for tokens (B,) on `encode`'s memory: logits (B, V), new state
        (B, U), attention weights (B, L). The GRU needs no step number t."""
        output, state, weights = self.recur(tokens, *memory, state)
        return self.logits(output), state, weights

    def call(self, features: tf.Tensor, tokens: tf.Tensor, training: bool = False):
        """Teacher forcing: features (B, L, F), tokens (B, T) → logits (B, T, V), weights (B, T, L).

        `training` is unused (no dropout) but kept for Keras' call convention.
        """
        values, keys = self.encode(features)
        state = self.initial_state(tf.shape(features)[0])
        outputs, weights = [], []
        for t in range(tokens.shape[1]):  # static T: the loop unrolls into one graph
            output, state, alpha = self.recur(tokens[:, t], values, keys, state)
            outputs.append(output)
            weights.append(alpha)
        return self.logits(tf.stack(outputs, axis=1)), tf.stack(weights, axis=1)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "embedding_dim": self.embedding_dim,
            "units": self.units,
            "attention_units": self.attention_units,
        }
