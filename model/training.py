"""Teacher-forced training on cached encoder features, with checkpoints and early stopping."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from core.decoders import with_defaults
from core.errors import TrainingStopped
from model.bundle import Bundle, FeatureNorm, save_bundle
from model.config import ModelConfig
from model.data import Example
from model.decoders import build_decoder
from model.encoder import Encoder
from model.evaluation import caption_features, score
from model.features import extract_features
from model.inference import Decoding
from model.limits import Limits, fit_limits, pooled_features
from model.scores import exact_match
from model.vocab import PAD_ID, Vocabulary


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run."""

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float | None = None  # Adam's; None: the decoder's (core/decoders.py)
    vocab_size: int = 5000  # words kept; the four specials come on top
    max_caption_words: int = 30  # longer training captions are cut
    attention_reg: float = 0.0  # λ of the doubly stochastic attention penalty (SAT eq. 14)
    clip_norm: float | None = 5.0  # global gradient norm cap: keeps Adam stable near zero loss
    seed: int = 0
    patience: int = 3  # stop after this many epochs without a better `monitor`
    monitor: str = "bleu4"  # validation metric (higher is better) for early stopping
    val_images: int = 1000  # validation images decoded after each epoch
    output_bias: bool = True  # a new decoder's output bias starts at log word frequencies


@dataclass(frozen=True)
class Progress:
    """Where a run is, for progress bars and the training worker."""

    epoch: int  # 1-based
    epochs: int
    step: int  # 1-based, within the epoch
    steps: int
    loss: float  # mean loss so far this epoch
    images_per_s: float
    steps_per_s: float
    eta_s: float  # for the whole run, at the current pace


@dataclass(frozen=True)
class Callbacks:
    """Hooks a caller may pass; every one is optional."""

    progress: Callable[[Progress], None] | None = None
    epoch_end: Callable[[dict], None] | None = None  # receives the epoch's history row
    features: Callable[[str, int, int], None] | None = None  # (split, done, total) images
    should_stop: Callable[[], bool] | None = None  # asked before every step; True stops the run


def caption_loss(decoder, features, tokens, attention_reg: float = 0.0, accuracy: bool = False):
    """Masked cross-entropy (sum over mask ÷ mask count), plus the attention penalty if any;
    with `accuracy`, also the share of target words (not <pad>) the decoder ranked first."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]  # (B, T) each
    logits, weights = decoder(features, inputs, training=True)  # (B, T, V), (B, T, L)
    mask = tf.cast(targets != PAD_ID, tf.float32)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)  # (B, T)
    loss = tf.reduce_sum(losses * mask) / tf.reduce_sum(mask)
    if attention_reg:
        coverage = tf.reduce_sum(weights * mask[..., None], axis=1)  # (B, L)
        loss += attention_reg * tf.reduce_mean(tf.square(1.0 - coverage))
    if not accuracy:
        return loss
    right = tf.cast(tf.argmax(logits, -1, output_type=tf.int32) == targets, tf.float32)
    return loss, tf.reduce_sum(right * mask) / tf.reduce_sum(mask)


def make_train_step(decoder, optimizer, norm: FeatureNorm, attention_reg: float = 0.0):
    """One optimisation step on raw features (B, 64, F) and tokens (B, T+1): its loss and
    token accuracy; not compiled."""
    mean, std = tf.constant(norm.mean), tf.constant(norm.std)

    def train_step(features, tokens):
        standardised = (tf.cast(features, tf.float32) - mean) / std
        with tf.GradientTape() as tape:
            loss, accuracy = caption_loss(decoder, standardised, tokens, attention_reg, True)
        gradients = tape.gradient(loss, decoder.trainable_variables)
        optimizer.apply_gradients(zip(gradients, decoder.trainable_variables, strict=True))
        return loss, accuracy

    return train_step


def start_at_word_frequencies(decoder, tokens: np.ndarray) -> None:
    """Set the output bias of a new decoder to the log word frequencies of captions (N, T+2)."""
    bias = decoder.output_layer.bias
    bias.assign(word_log_frequencies(tokens, bias.shape[0]))


def word_log_frequencies(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """log p(word) (V,) over the target words of captions (N, T+2), with half a count for the
    words never seen, so the output starts at the unigram model instead of uniform."""
    targets = tokens[:, 1:]
    counts = np.bincount(targets[targets != PAD_ID], minlength=vocab_size).astype(np.float64)
    counts[counts == 0] = 0.5
    return np.log(counts / counts.sum()).astype(np.float32)


def compile_step(step, token_width: int, feature_dim: int = 2048, locations: int = 64):
    """`step` as one graph for any batch size; the caption length is fixed so time unrolls."""
    spec = [
        tf.TensorSpec((None, locations, feature_dim), tf.float16),
        tf.TensorSpec((None, token_width), tf.int32),
    ]
    return tf.function(step, input_signature=spec)


def encode_captions(
    examples: Sequence[Example], vocab: Vocabulary, max_words: int
) -> tuple[np.ndarray, np.ndarray]:
    """One row per caption: image index (N,) and padded `<start> … <end>` ids (N, T+2)."""
    rows = [(i, vocab.encode(c, max_words)) for i, e in enumerate(examples) for c in e.captions]
    width = max(len(ids) for _, ids in rows)
    tokens = np.full((len(rows), width), PAD_ID, np.int32)
    for row, (_, ids) in enumerate(rows):
        tokens[row, : len(ids)] = ids
    return np.array([i for i, _ in rows], np.int64), tokens


def batches(features: np.ndarray, index, tokens, batch_size: int, seed: int) -> tf.data.Dataset:
    """Shuffled (features (B, 64, F) float16, tokens (B, T+2)) batches; features read lazily."""

    def gather(rows: np.ndarray) -> np.ndarray:
        return np.asarray(features[rows])  # fancy indexing copies from the memmap

    def load(rows, ids):
        batch = tf.numpy_function(gather, [rows], tf.float16)
        return tf.ensure_shape(batch, (None, *features.shape[1:])), ids

    data = tf.data.Dataset.from_tensor_slices((index, tokens))
    data = data.shuffle(len(tokens), seed=seed).batch(batch_size)
    return data.map(load).prefetch(tf.data.AUTOTUNE)


class Trainer:
    """A decoder, its optimiser and checkpoints in `work_dir`: resumes where it stopped."""

    def __init__(self, bundle: Bundle, config: TrainConfig, work_dir: Path) -> None:
        self.bundle, self.config, self.work_dir = bundle, config, Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.optimizer = keras.optimizers.Adam(
            config.learning_rate, global_clipnorm=config.clip_norm
        )
        self.optimizer.build(bundle.decoder.trainable_variables)  # so a restore has slots to fill
        self.epoch = tf.Variable(0, dtype=tf.int64)  # epochs completed
        self.best = tf.Variable(-math.inf, dtype=tf.float64)
        self.stale = tf.Variable(0, dtype=tf.int64)  # epochs since `best` improved
        checkpoint = tf.train.Checkpoint(
            decoder=bundle.decoder,
            optimizer=self.optimizer,
            epoch=self.epoch,
            best=self.best,
            stale=self.stale,
        )
        self.manager = tf.train.CheckpointManager(checkpoint, self.work_dir / "checkpoints", 2)
        self.history: list[dict] = []
        self.decoding = Decoding(bundle)  # traced once, reused by every validation
        if self.manager.latest_checkpoint:
            checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
            self.history = json.loads(self._history_file.read_text())[: int(self.epoch)]
        self.step = make_train_step(
            bundle.decoder, self.optimizer, bundle.norm, config.attention_reg
        )

    @property
    def _history_file(self) -> Path:
        return self.work_dir / "history.json"

    @property
    def _best_weights(self) -> Path:
        return self.work_dir / "best.weights.h5"

    def fit(self, train: tuple, val: tuple, callbacks: Callbacks) -> list[dict]:
        """Train until `epochs` or early stopping; the decoder ends with the best weights."""
        features, index, tokens = train
        config = self.bundle.config
        train_step = compile_step(
            self.step, tokens.shape[1], config.feature_dim, config.num_locations
        )
        start = time.monotonic()
        steps_done = 0
        while int(self.epoch) < self.config.epochs and self.stale < self.config.patience:
            epoch = int(self.epoch) + 1
            seed = self.config.seed + epoch  # each epoch its own order, the same after a resume
            data = batches(features, index, tokens, self.config.batch_size, seed)
            loss, accuracy = self._run_epoch(
                train_step, epoch, data, len(tokens), (start, steps_done), callbacks
            )
            steps_done += math.ceil(len(tokens) / self.config.batch_size)
            self._end_epoch(epoch, {"loss": loss, "accuracy": accuracy}, val, callbacks)
        if self._best_weights.is_file():
            self.bundle.decoder.load_weights(self._best_weights)
        return self.history

    def _run_epoch(self, train_step, epoch, data, n, clock, callbacks) -> tuple[float, float]:
        """Mean loss and token accuracy of one pass over the data."""
        start, steps_done = clock  # run start time, steps before this epoch
        steps = math.ceil(n / self.config.batch_size)
        total, right = tf.constant(0.0), tf.constant(0.0)
        for step, (features, tokens) in enumerate(data, 1):
            if callbacks.should_stop and callbacks.should_stop():
                raise TrainingStopped(f"stopped in epoch {epoch} before step {step}")
            loss, accuracy = train_step(features, tokens)
            total, right = total + loss, right + accuracy
            if callbacks.progress and (step % 10 == 0 or step == steps):
                elapsed = time.monotonic() - start
                pace = elapsed / (steps_done + step)  # seconds per step, this run
                remaining = (self.config.epochs - epoch) * steps + steps - step
                images = min(step * self.config.batch_size, n)
                callbacks.progress(
                    Progress(
                        epoch,
                        self.config.epochs,
                        step,
                        steps,
                        float(total) / step,
                        (steps_done * self.config.batch_size + images) / elapsed,
                        1 / pace,
                        pace * remaining,
                    )
                )
        return float(total) / steps, float(right) / steps

    def _end_epoch(self, epoch: int, fit: dict, val: tuple, callbacks: Callbacks) -> None:
        """Validate, keep the best weights, checkpoint; `fit` holds the epoch's loss, accuracy."""
        examples, features = val
        scores = score(examples, caption_features(self.decoding, features))
        row = {"epoch": epoch, **fit, **scores}
        self.history.append(row)
        value = scores[self.config.monitor]
        if value is not None and value > float(self.best):
            self.best.assign(value)
            self.stale.assign(0)
            self.bundle.decoder.save_weights(self._best_weights)
        else:
            self.stale.assign_add(1)
        self.epoch.assign(epoch)
        self._history_file.write_text(json.dumps(self.history, indent=1))
        self.manager.save(checkpoint_number=epoch)
        if callbacks.epoch_end:
            callbacks.epoch_end(row)


def train(
    splits: dict[str, list[Example]],
    encoder: Encoder,
    out: Path,
    config: TrainConfig = TrainConfig(),
    model_config: ModelConfig = ModelConfig(),
    work_dir: Path | None = None,
    cache_dir: Path | None = None,
    callbacks: Callbacks = Callbacks(),
    base: Bundle | None = None,
) -> Bundle:
    """Train a decoder on the `train` split, validate on `val`, save the best as a bundle.

    With a `base` bundle, training starts from its weights and keeps its vocabulary and
    feature normalisation (fine-tuning); otherwise from a fresh decoder.
    """
    if base is not None:
        base.check_encoder(encoder.info)
    train_examples, val_examples = splits["train"], splits["val"][: config.val_images]
    out = Path(out)
    work_dir = Path(work_dir or out.with_name(out.name + ".work"))
    cache_dir = Path(cache_dir or work_dir / "features")
    train_features = _features(encoder, train_examples, cache_dir, "train", callbacks)
    val_features = _features(encoder, val_examples, cache_dir, "val", callbacks)
    keras.utils.set_random_seed(config.seed)
    bundle = base or new_bundle(train_examples, train_features, encoder, config, model_config)
    config = with_decoder_defaults(config, bundle.config.decoder)
    index, tokens = encode_captions(train_examples, bundle.vocab, config.max_caption_words)
    if base is None and config.output_bias:
        start_at_word_frequencies(bundle.decoder, tokens)
    trainer = Trainer(bundle, config, work_dir)
    started = time.monotonic()
    history = trainer.fit((train_features, index, tokens), (val_examples, val_features), callbacks)
    bundle.limits, limits_metrics = fit_bundle_limits(
        trainer.decoding, train_features, val_examples, val_features
    )
    best = max(history, key=lambda row: row[config.monitor] or -math.inf)
    bundle.metrics = {
        "val": {k: v for k, v in best.items() if k not in ("epoch", "loss", "accuracy")},
        "best_epoch": best["epoch"],
        "history": history,
        "train_images": len(train_examples),
        "train_captions": len(tokens),
        "val_images": len(val_examples),
        "train_config": asdict(config),
        "fit_seconds": round(time.monotonic() - started, 1),
        **limits_metrics,  # "calibration" and "ood"
    }
    save_bundle(bundle, out)
    return bundle


def fit_bundle_limits(
    decoding: Decoding, train_features: np.ndarray, val_examples: Sequence[Example], val_features
) -> tuple[Limits, dict]:
    """Calibrate confidence on the val captions of the final decoder and record the training
    images' feature statistics (model/limits.py); with the metrics to keep."""
    results = caption_features(decoding, val_features)
    correct = [exact_match(e.captions, r.text) for e, r in zip(val_examples, results, strict=True)]
    return fit_limits(
        pooled_features(train_features),
        pooled_features(val_features),
        np.array([r.score for r in results]),
        np.array(correct),
    )


def with_decoder_defaults(config: TrainConfig, decoder: str) -> TrainConfig:
    """`config` with each setting it leaves at None set to `decoder`'s default."""
    return replace(config, **with_defaults(asdict(config), decoder))


def new_bundle(
    examples: Sequence[Example],
    features: np.ndarray,
    encoder: Encoder,
    config: TrainConfig,
    model_config: ModelConfig,
) -> Bundle:
    """An untrained decoder with the vocabulary and normalisation of these training examples."""
    vocab = Vocabulary.build((c for e in examples for c in e.captions), config.vocab_size)
    model_config = ModelConfig(**{**model_config.to_dict(), "vocab_size": len(vocab)})
    return Bundle(
        config=model_config,
        vocab=vocab,
        decoder=build_decoder(model_config),
        norm=FeatureNorm.fit(features),
        encoder=encoder.info,
    )


def _features(encoder, examples, cache_dir, split: str, callbacks: Callbacks) -> np.ndarray:
    done = 0

    def progress(n: int) -> None:
        nonlocal done
        done += n
        callbacks.features(split, done, len(examples))

    hook = progress if callbacks.features else None
    return extract_features(encoder, examples, cache_dir, progress=hook)
