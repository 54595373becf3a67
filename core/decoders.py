"""The decoder architectures and the training settings each one defaults to.

One table for the CLI (`captioner train`'s defaults), the API (a run that leaves a setting out
gets its decoder's, and /openapi.json lists them) and the model (a TrainConfig without one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

DECODERS = ("gru", "transformer")  # the decoder architectures this version can build


@dataclass(frozen=True)
class DecoderDefaults:
    """The training settings whose defaults differ between decoders."""

    learning_rate: float  # Adam's


TRAINING_DEFAULTS = {
    "gru": DecoderDefaults(learning_rate=1e-3),
    # Post-norm blocks without warm-up: at 1e-3 the loss climbed back after epoch 16 on the
    # shapes set (best BLEU-4 0.924); at 5e-4 it trains stably (0.979; BENCHMARKS.md, issue 17).
    "transformer": DecoderDefaults(learning_rate=5e-4),
}


def training_defaults(decoder: str) -> dict[str, Any]:
    """The settings `decoder` trains with unless told otherwise: {"learning_rate": …}."""
    return asdict(TRAINING_DEFAULTS[decoder])


def with_defaults(settings: dict[str, Any], decoder: str) -> dict[str, Any]:
    """`settings` with each decoder-dependent one left at None set to `decoder`'s default."""
    defaults = training_defaults(decoder)
    return settings | {k: v for k, v in defaults.items() if settings.get(k) is None}


def defaults_by_decoder(name: str) -> dict[str, Any]:
    """One setting's default for each decoder: {"gru": 0.001, "transformer": 0.0005}."""
    return {decoder: training_defaults(decoder)[name] for decoder in DECODERS}


def described_defaults(name: str) -> str:
    """One setting's defaults in words, for help texts: "0.001 for gru, 0.0005 for transformer"."""
    return ", ".join(f"{v:g} for {d}" for d, v in defaults_by_decoder(name).items())
