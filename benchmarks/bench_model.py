"""Model speed on this machine: encoder vs encoder+decode, compiled vs eager decode and training.

Prints one JSON object. Run: `python benchmarks/bench_model.py [--reps 11] [--batches 1,8,32]`.
The decoder has the full-size vocabulary (5,004) and random weights, with <end> suppressed so
every caption runs the whole 20 steps: the slowest case for decoding.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from model.bundle import Bundle, FeatureNorm  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.encoder import Encoder  # noqa: E402
from model.inference import Captioner  # noqa: E402
from model.layers import CaptionDecoder  # noqa: E402
from model.training import compile_step, make_train_step  # noqa: E402
from model.vocab import END_ID, SPECIALS, START_ID, Vocabulary  # noqa: E402

BATCHES = (1, 8, 32)
STEPS = 20


def timed(fn) -> float:
    """Seconds one call takes, results forced to host memory."""
    start = time.perf_counter()
    out = fn()
    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)
    return time.perf_counter() - start


def alternate(fns: dict, reps: int) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved so drift hits all alike."""
    for fn in fns.values():
        timed(fn)  # warm-up: tracing and first-call allocation
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return {name: statistics.median(values) for name, values in times.items()}


def full_size_bundle(encoder: Encoder) -> Bundle:
    """A random decoder with the default sizes; <end> can never win, so decodes run 20 steps."""
    keras.utils.set_random_seed(0)
    vocab = Vocabulary(SPECIALS + tuple(f"w{i}" for i in range(5000)))
    config = ModelConfig(vocab_size=len(vocab), max_length=STEPS)
    decoder = CaptionDecoder.from_model_config(config)
    bias = decoder.fc2.bias.numpy()
    bias[END_ID] = -1e4
    decoder.fc2.bias.assign(bias)
    norm = FeatureNorm(np.full(2048, 5e-4, np.float32), np.full(2048, 8e-4, np.float32))
    return Bundle(config, vocab, decoder, norm, encoder.info)


def tutorial_decode(bundle: Bundle, features: tf.Tensor) -> tf.Tensor:
    """Greedy decode as the seed tutorials write it: an eager Python loop, one call per word,
    the attention's image-side projection recomputed at every step."""
    decoder = bundle.decoder
    values = decoder.image_projection((features - bundle.norm.mean) / bundle.norm.std)
    state = decoder.initial_state(features.shape[0], STEPS)
    tokens = tf.fill([features.shape[0]], START_ID)
    words = []
    for t in range(STEPS):
        keys = decoder.attention.project(values)  # what `encode` computes once per image
        logits, state, _ = decoder.step(tokens, (values, keys), state, t)
        tokens = tf.argmax(logits, axis=-1, output_type=tf.int32)
        words.append(tokens)
    return tf.stack(words, axis=1)


def inference_figures(encoder: Encoder, bundle: Bundle, reps: int, batches=BATCHES) -> dict:
    """Images/s of the encoder alone and with greedy decode, and the decoder's share."""
    captioner = Captioner(bundle, encoder)
    images = np.random.default_rng(0).uniform(-1, 1, (max(batches), 299, 299, 3))
    images = images.astype(np.float32)
    out: dict = {}
    for b in batches:
        batch = images[:b]
        features = encoder(batch)
        seconds = alternate(
            {
                "encoder": lambda batch=batch: encoder(batch),
                "caption": lambda batch=batch: captioner.caption_batch(batch),
                "decode": lambda f=features: captioner.decoding.search(f),
            },
            reps,
        )
        out[f"encoder_ips_b{b}"] = round(b / seconds["encoder"], 2)
        out[f"caption_ips_b{b}"] = round(b / seconds["caption"], 2)
        out[f"decode_ms_b{b}"] = round(1000 * seconds["decode"], 1)
        out[f"decoder_share_b{b}"] = round(seconds["decode"] / seconds["caption"], 3)
    top = max(batches)
    out[f"caption_vs_encoder_b{top}"] = round(
        out[f"caption_ips_b{top}"] / out[f"encoder_ips_b{top}"], 3
    )
    return out


def decode_figures(bundle: Bundle, reps: int, batches=BATCHES) -> dict:
    """The compiled in-graph decode against the tutorial's eager step-by-step loop, at the
    smallest and the largest batch."""
    from model.inference import Decoding

    decoding = Decoding(bundle)
    out: dict = {}
    for b in sorted({min(batches), max(batches)}):
        features = tf.random.normal((b, 64, 2048), mean=5e-4, stddev=8e-4, seed=b)
        seconds = alternate(
            {
                "compiled": lambda f=features: decoding.search(f),
                "eager": lambda f=features: tutorial_decode(bundle, f),
            },
            reps,
        )
        out[f"decode_compiled_ms_b{b}"] = round(1000 * seconds["compiled"], 1)
        out[f"decode_eager_ms_b{b}"] = round(1000 * seconds["eager"], 1)
        out[f"decode_speedup_vs_eager_b{b}"] = round(seconds["eager"] / seconds["compiled"], 2)
    return out


def train_figures(bundle: Bundle, reps: int) -> dict:
    """Training steps/s (batch 64, captions of 12 tokens) compiled vs eager."""
    decoder = bundle.decoder
    features = tf.cast(tf.random.normal((64, 64, 2048), 5e-4, 8e-4, seed=1), tf.float16)
    tokens = tf.random.uniform((64, 12), 4, bundle.config.vocab_size, tf.int32, seed=2)
    optimizer = keras.optimizers.Adam(1e-3)
    step = make_train_step(decoder, optimizer, bundle.norm)
    compiled = compile_step(step, tokens.shape[1])
    seconds = alternate(
        {"compiled": lambda: compiled(features, tokens), "eager": lambda: step(features, tokens)},
        reps,
    )
    return {
        "train_steps_per_s_compiled": round(1 / seconds["compiled"], 2),
        "train_steps_per_s_eager": round(1 / seconds["eager"], 2),
        "train_speedup_compiled": round(seconds["eager"] / seconds["compiled"], 2),
    }


def main() -> None:
    """Run every measurement and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=11, help="timed calls per figure")
    parser.add_argument(
        "--batches",
        type=lambda text: tuple(sorted({int(b) for b in text.split(",")})),
        default=BATCHES,
        help="batch sizes, e.g. 1,8,32; the ratios are taken at the largest",
    )
    args = parser.parse_args()
    reps, batches, top = args.reps, args.batches, max(args.batches)
    encoder = Encoder("seed:0")
    bundle = full_size_bundle(encoder)
    result = {
        "benchmark": "bench_model",
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "tensorflow": tf.__version__,
        "gpu": bool(tf.config.list_physical_devices("GPU")),
        "vocab_size": bundle.config.vocab_size,
        "decode_steps": STEPS,
        "reps": reps,
        "batches": list(batches),
        **inference_figures(encoder, bundle, reps, batches),
        **decode_figures(bundle, reps, batches),
        **train_figures(bundle, reps),
    }
    # The headline figures, at the largest batch (32 by default).
    result["caption_vs_encoder"] = result[f"caption_vs_encoder_b{top}"]
    result["decode_speedup_vs_eager"] = result[f"decode_speedup_vs_eager_b{top}"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
