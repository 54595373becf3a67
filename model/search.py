"""Greedy and beam search inside one graph: a `tf.while_loop` that stops when all have ended.

Outputs live in fixed-size buffers (one column per step, written with `tf.where`), so both
searches have static shapes and compile with XLA.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from model.layers import CaptionDecoder
from model.vocab import END_ID, PAD_ID, START_ID


class SearchOutput(NamedTuple):
    """Per image: token ids (B, T), their log-probabilities (B, T), attention (B, T, L).

    T is the maximum length; columns after a sequence's <end> hold <pad>, 0 and 0.
    """

    tokens: tf.Tensor
    log_probs: tf.Tensor
    attention: tf.Tensor


def write_column(buffer: tf.Tensor, t, column: tf.Tensor, time_axis: int) -> tf.Tensor:
    """`buffer` with index t of `time_axis` set to `column` (buffer's shape without that axis)."""
    length = buffer.shape[time_axis]
    at_t = tf.reshape(tf.range(length) == t, [length] + [1] * (buffer.shape.rank - time_axis - 1))
    return tf.where(at_t, tf.expand_dims(column, time_axis), buffer)


def greedy_search(decoder: CaptionDecoder, features: tf.Tensor, max_length: int) -> SearchOutput:
    """Most likely word at each step, for standardised features (B, L, F)."""
    values, keys = decoder.encode(features)  # (B, L, E), (B, L, A), once per image
    batch, locations = tf.shape(features)[0], features.shape[1]

    def body(t, tokens, state, done, out_tokens, out_log_probs, out_attention):
        logits, state, weights = decoder.step(tokens, values, keys, state)
        log_probs = word_log_probs(logits)  # (B, V)
        tokens = tf.argmax(log_probs, axis=-1, output_type=tf.int32)  # (B,)
        chosen = tf.gather(log_probs, tokens, batch_dims=1)  # (B,)
        tokens = tf.where(done, PAD_ID, tokens)  # finished sequences emit <pad> at no cost
        chosen = tf.where(done, 0.0, chosen)
        weights = tf.where(done[:, None], 0.0, weights)
        return (
            t + 1,
            tokens,
            state,
            done | (tokens == END_ID),
            write_column(out_tokens, t, tokens, 1),  # (B, T)
            write_column(out_log_probs, t, chosen, 1),  # (B, T)
            write_column(out_attention, t, weights, 1),  # (B, T, L)
        )

    def cond(t, tokens, state, done, *buffers):
        return (t < max_length) & ~tf.reduce_all(done)

    start = [
        0,
        tf.fill([batch], START_ID),
        decoder.initial_state(batch),
        tf.zeros([batch], tf.bool),
        tf.fill([batch, max_length], PAD_ID),
        tf.zeros([batch, max_length]),
        tf.zeros([batch, max_length, locations]),
    ]
    loop = tf.while_loop(cond, body, start, maximum_iterations=max_length)
    return SearchOutput(*loop[4:])


def beam_search(
    decoder: CaptionDecoder,
    features: tf.Tensor,
    max_length: int,
    beam_size: int,
    length_penalty: float = 0.6,
) -> SearchOutput:
    """Batched beam search; per image the best beam by score / ((5 + length) / 6) ** penalty.

    Beams that emitted <end> are preferred; when none did by `max_length`, the best unfinished
    beam is returned, so every image gets a caption.
    """
    k, vocab = beam_size, decoder.vocab_size
    batch, locations = tf.shape(features)[0], features.shape[1]
    values, keys = decoder.encode(features)  # once per image, then one copy per beam
    values, keys = tf.repeat(values, k, axis=0), tf.repeat(keys, k, axis=0)  # (B·K, L, …)
    pad_only = tf.where(tf.range(vocab) == PAD_ID, 0.0, -float("inf"))  # (V,)

    def body(t, tokens, state, scores, finished, seqs, seq_log_probs, seq_attention):
        logits, state, weights = decoder.step(tokens, values, keys, state)
        log_probs = tf.reshape(word_log_probs(logits), (batch, k, vocab))
        # A finished beam continues only with <pad>, at no cost: it keeps its score and slot.
        log_probs = tf.where(finished[..., None], pad_only, log_probs)
        total = tf.reshape(scores[..., None] + log_probs, (batch, k * vocab))
        scores, flat = tf.math.top_k(total, k)  # (B, K): best K of all beams' continuations
        parent, words = flat // vocab, flat % vocab  # (B, K)

        def pick(x):  # reorder per-beam tensors (B, K, …) by parent beam
            return tf.gather(x, parent, batch_dims=1)

        chosen = tf.gather(tf.reshape(log_probs, (batch, k * vocab)), flat, batch_dims=1)
        was_finished = pick(finished)
        weights = tf.where(was_finished[..., None], 0.0, pick(tf.reshape(weights, (batch, k, -1))))
        units = decoder.units
        state = tf.reshape(pick(tf.reshape(state, (batch, k, units))), (batch * k, units))
        return (
            t + 1,
            tf.reshape(words, [-1]),
            state,
            scores,
            was_finished | (words == END_ID),
            write_column(pick(seqs), t, words, 2),  # (B, K, T)
            write_column(pick(seq_log_probs), t, chosen, 2),  # (B, K, T)
            write_column(pick(seq_attention), t, weights, 2),  # (B, K, T, L)
        )

    def cond(t, tokens, state, scores, finished, *buffers):
        return (t < max_length) & ~tf.reduce_all(finished)

    # Only beam 0 is live at first, so the first step's K best words are K different words.
    scores = tf.tile(tf.constant([[0.0] + [-float("inf")] * (k - 1)]), [batch, 1])  # (B, K)
    start = [
        0,
        tf.fill([batch * k], START_ID),
        decoder.initial_state(batch * k),
        scores,
        tf.zeros([batch, k], tf.bool),
        tf.fill([batch, k, max_length], PAD_ID),
        tf.zeros([batch, k, max_length]),
        tf.zeros([batch, k, max_length, locations]),
    ]
    loop = tf.while_loop(cond, body, start, maximum_iterations=max_length)
    _, _, _, scores, finished, seqs, seq_log_probs, seq_attention = loop
    best = best_beams(scores, finished, seqs, length_penalty)  # (B,)
    return SearchOutput(
        tf.gather(seqs, best, batch_dims=1),
        tf.gather(seq_log_probs, best, batch_dims=1),
        tf.gather(seq_attention, best, batch_dims=1),
    )


def best_beams(scores, finished, seqs, length_penalty: float) -> tf.Tensor:
    """Index (B,) of each image's best beam: ended beams first, then length-normalised score."""
    lengths = tf.reduce_sum(tf.cast(seqs != PAD_ID, tf.float32), axis=-1)  # (B, K), with <end>
    normalised = scores / ((5.0 + lengths) / 6.0) ** length_penalty
    any_finished = tf.reduce_any(finished, axis=-1, keepdims=True)
    normalised = tf.where(any_finished & ~finished, -float("inf"), normalised)
    return tf.argmax(normalised, axis=-1, output_type=tf.int32)


def word_log_probs(logits: tf.Tensor) -> tf.Tensor:
    """Log-softmax over the vocabulary with <pad> and <start> ruled out (never emitted)."""
    never = tf.one_hot(PAD_ID, logits.shape[-1]) + tf.one_hot(START_ID, logits.shape[-1])
    return tf.nn.log_softmax(logits - 1e9 * never)
