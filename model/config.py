"""The model's sizes, saved with every bundle and used to rebuild the decoder."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from core.decoders import DECODERS
from core.errors import BundleError


@dataclass(frozen=True)
class ModelConfig:
    """Decoder dimensions and decoding defaults (the encoder is fixed: InceptionV3, 299×299)."""

    vocab_size: int = 5004  # top 5,000 words + <pad> <start> <end> <unk>
    feature_dim: int = 2048  # channels of InceptionV3's last feature map
    num_locations: int = 64  # 8×8 grid of that feature map, flattened row-major
    embedding_dim: int = 256  # image features and words are both projected to this size
    units: int = 512  # GRU state size
    attention_units: int = 512  # Bahdanau attention's hidden size
    max_length: int = 20  # default cap on emitted words at inference
    decoder: str = "gru"  # the architecture, one of DECODERS (bundles before format 2: gru)
    # The Transformer's sizes (its width is embedding_dim); the GRU ignores them.
    layers: int = 2  # decoder blocks: self-attention, cross-attention, feed-forward
    # Attention heads per block (embedding_dim must divide by them). The tutorial has 2, but the
    # service's maps average the heads, and 2 heads that look at different things blur them.
    heads: int = 1
    ff_units: int = 1024  # feed-forward hidden size
    dropout: float = 0.1  # after attention, feed-forward and embeddings, in training only

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild a config, or raise BundleError naming what this version cannot build: a
        setting it does not know (ignoring it could build another model than the one trained)
        or a decoder architecture it lacks."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise BundleError(
                f"model settings this version does not know: {', '.join(unknown)}"
                " (a bundle made by a newer captioner?)"
            )
        config = cls(**data)
        if config.decoder not in DECODERS:
            raise BundleError(
                f"decoder {config.decoder!r} is not one this version builds ({', '.join(DECODERS)})"
            )
        if config.embedding_dim % config.heads:
            raise BundleError(
                f"embedding_dim {config.embedding_dim} does not divide into {config.heads} heads"
            )
        return config
