"""Greedy, sampled and beam search inside one graph: a `tf.while_loop` that stops when all
have ended. Both work with any decoder of model/decoders.py: its state is a nest of tensors.

Outputs live in fixed-size buffers (one column per step, written with `tf.where`), so the
searches have static shapes and compile with XLA.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from model.buffers import write_column
from model.decoders import Decoder
from model.vocab import END_ID, PAD_ID, START_ID


class SearchOutput(NamedTuple):
    """Per image: token ids (B, T), their log-probabilities (B, T), attention (B, T, L).

    T is the maximum length; columns after a sequence's <end> hold <pad>, 0 and 0.
    """

    tokens: tf.Tensor
    log_probs: tf.Tensor
    attention: tf.Tensor


def greedy_search(
    decoder: Decoder,
    features: tf.Tensor,
    max_length: int,
    temperatures: tf.Tensor | None = None,
    seeds: tf.Tensor | None = None,
) -> SearchOutput:
    """For standardised features (B, L, F), the most likely word at each step; or, for images
    whose temperature (B,) is above 0, a word drawn from softmax(logits / temperature) with
    noise that depends only on the image's seed (B,) and the step, not on the batch."""
    memory = decoder.encode(features)  # once per image
    batch, locations = tf.shape(features)[0], features.shape[1]

    def body(t, tokens, state, done, out_tokens, out_log_probs, out_attention):
        logits, state, weights = decoder.step(tokens, memory, state, t)
        log_probs = word_log_probs(logits)  # (B, V)
        tokens = choose(log_probs, t, temperatures, seeds)  # (B,)
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
        decoder.initial_state(batch, max_length),
        tf.zeros([batch], tf.bool),
        tf.fill([batch, max_length], PAD_ID),
        tf.zeros([batch, max_length]),
        tf.zeros([batch, max_length, locations]),
    ]
    loop = tf.while_loop(cond, body, start, maximum_iterations=max_length)
    return SearchOutput(*loop[4:])


def choose(log_probs: tf.Tensor, t, temperatures, seeds) -> tf.Tensor:
    """Each row's word (B,): the argmax, or where its temperature is above 0 a sample (the
    Gumbel-max trick: argmax of log_probs / temperature + Gumbel noise). A batch with no such
    row makes no noise."""
    best = tf.argmax(log_probs, axis=-1, output_type=tf.int32)
    if temperatures is None:
        return best
    hot = temperatures > 0.0

    def sample():
        noise = gumbel_noise(seeds, t, log_probs.shape[-1])  # (B, V)
        scaled = log_probs / tf.where(hot, temperatures, 1.0)[:, None] + noise
        return tf.where(hot, tf.argmax(scaled, axis=-1, output_type=tf.int32), best)

    return tf.cond(tf.reduce_any(hot), sample, lambda: best)


def gumbel_noise(seeds: tf.Tensor, t, vocab: int) -> tf.Tensor:
    """Gumbel(0, 1) noise (B, V) from a counter-based hash of (seed, step, word): the same for
    a seed on any batch, device or batch position, and with no state to carry."""
    seed = _mix(tf.cast(seeds, tf.uint32) * 0x9E3779B1 + tf.cast(t, tf.uint32) * 0x85EBCA77)
    bits = _mix(seed[:, None] ^ (tf.cast(tf.range(vocab), tf.uint32)[None, :] * 0xC2B2AE3D))
    uniform = (tf.cast(_shift(bits, 8), tf.float32) + 0.5) / 2.0**24  # (0, 1): 24 random bits
    return -tf.math.log(-tf.math.log(uniform))


def _mix(x: tf.Tensor) -> tf.Tensor:
    """MurmurHash3's 32-bit finaliser: every input bit flips about half the output bits."""
    x = (x ^ _shift(x, 16)) * 0x85EBCA6B
    x = (x ^ _shift(x, 13)) * 0xC2B2AE35
    return x ^ _shift(x, 16)


def _shift(x: tf.Tensor, bits: int) -> tf.Tensor:
    """x >> bits for uint32 tensors."""
    return tf.bitwise.right_shift(x, tf.constant(bits, tf.uint32))


class Beams(NamedTuple):
    """Per image, every beam: token ids (B, K, T), their log-probabilities (B, K, T), attention
    (B, K, T, L), each beam's total log-probability (B, K) and whether it emitted <end> (B, K)."""

    tokens: tf.Tensor
    log_probs: tf.Tensor
    attention: tf.Tensor
    scores: tf.Tensor
    finished: tf.Tensor


def beam_search(
    decoder: Decoder,
    features: tf.Tensor,
    max_length: int,
    beam_size: int,
    length_penalty: float = 0.6,
) -> SearchOutput:
    """Batched beam search; per image the best beam by score / ((5 + length) / 6) ** penalty.

    Beams that emitted <end> are preferred; when none did by `max_length`, the best unfinished
    beam is returned, so every image gets a caption.
    """
    beams = all_beams(decoder, features, max_length, beam_size)
    best = best_beams(beams.scores, beams.finished, beams.tokens, length_penalty)  # (B,)
    return SearchOutput(
        *(
            tf.gather(x, best, batch_dims=1)
            for x in (beams.tokens, beams.log_probs, beams.attention)
        )
    )


def all_beams(decoder: Decoder, features: tf.Tensor, max_length: int, beam_size: int) -> Beams:
    """The K beams of a batched beam search, each with the decoder state of its own ancestors."""
    k, vocab = beam_size, decoder.vocab_size
    batch, locations = tf.shape(features)[0], features.shape[1]
    memory = tf.nest.map_structure(  # once per image, then one copy per beam: (B·K, …)
        lambda x: tf.repeat(x, k, axis=0), decoder.encode(features)
    )
    pad_only = tf.where(tf.range(vocab) == PAD_ID, 0.0, -float("inf"))  # (V,)

    def body(t, tokens, state, scores, finished, seqs, seq_log_probs, seq_attention):
        logits, state, weights = decoder.step(tokens, memory, state, t)
        log_probs = tf.reshape(word_log_probs(logits), (batch, k, vocab))
        # A finished beam continues only with <pad>, at no cost: it keeps its score and slot.
        log_probs = tf.where(finished[..., None], pad_only, log_probs)
        total = tf.reshape(scores[..., None] + log_probs, (batch, k * vocab))
        scores, flat = tf.math.top_k(total, k)  # (B, K): best K of all beams' continuations
        parent, words = flat // vocab, flat % vocab  # (B, K)

        def pick(x):  # reorder per-beam tensors (B, K, …) by parent beam
            return tf.gather(x, parent, batch_dims=1)

        def pick_flat(x):  # the same for a state tensor (B·K, …)
            return tf.reshape(pick(tf.reshape(x, (batch, k, *x.shape[1:]))), (-1, *x.shape[1:]))

        chosen = tf.gather(tf.reshape(log_probs, (batch, k * vocab)), flat, batch_dims=1)
        was_finished = pick(finished)
        weights = tf.where(was_finished[..., None], 0.0, pick(tf.reshape(weights, (batch, k, -1))))
        state = tf.nest.map_structure(pick_flat, state)
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
        decoder.initial_state(batch * k, max_length),
        scores,
        tf.zeros([batch, k], tf.bool),
        tf.fill([batch, k, max_length], PAD_ID),
        tf.zeros([batch, k, max_length]),
        tf.zeros([batch, k, max_length, locations]),
    ]
    loop = tf.while_loop(cond, body, start, maximum_iterations=max_length)
    _, _, _, scores, finished, seqs, seq_log_probs, seq_attention = loop
    return Beams(seqs, seq_log_probs, seq_attention, scores, finished)


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
