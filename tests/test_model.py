"""The model end to end on random weights: shapes, dtypes, search, bundles, encoder identity."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from core.errors import BundleError
from model.bundle import EncoderMismatch, load_bundle, save_bundle
from model.encoder import Encoder
from model.inference import Captioner, Decoding, Sampling
from model.search import all_beams, beam_search, greedy_search, word_log_probs
from model.vocab import PAD_ID, START_ID


def test_encoder_gives_64_locations_of_2048_float32(encoder, images):
    features = encoder(images)
    assert features.shape == (4, 64, 2048)
    assert features.dtype == tf.float32
    assert np.isfinite(features.numpy()).all()


def test_seeded_encoder_is_identical_in_another_process(encoder):
    code = "from model.encoder import Encoder; print(Encoder('seed:0').fingerprint)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == encoder.fingerprint
    assert len(encoder.fingerprint) == 16


def test_teacher_forcing_shapes(any_bundle):
    features = tf.random.normal((3, 64, 2048))
    tokens = tf.constant(np.random.default_rng(0).integers(4, 30, (3, 7)), tf.int32)
    logits, weights = any_bundle.decoder(features, tokens)
    assert logits.shape == (3, 7, 30) and weights.shape == (3, 7, 64)
    np.testing.assert_allclose(weights.numpy().sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_caption_batch_results_are_consistent(any_bundle, encoder, images, beam_size):
    results = Captioner(any_bundle, encoder).caption_batch(images, beam_size=beam_size)
    assert len(results) == 4
    assert any(result.tokens for result in results)
    for result in results:
        assert result.text == " ".join(result.tokens)
        assert len(result.tokens) == len(result.log_probs) <= any_bundle.config.max_length
        assert result.attention.shape == (len(result.tokens), 64)
        assert result.attention.dtype == np.float32
        np.testing.assert_allclose(result.attention.sum(-1), 1.0, rtol=1e-4)
        assert all(lp <= 0 for lp in result.log_probs)
        assert not {"<pad>", "<start>", "<end>"} & set(result.tokens)


def test_beam_of_one_equals_greedy(any_bundle):
    features = tf.random.normal((6, 64, 2048), seed=1)
    greedy = tf.function(lambda f: greedy_search(any_bundle.decoder, f, 8))(features)
    beam = tf.function(lambda f: beam_search(any_bundle.decoder, f, 8, 1))(features)
    np.testing.assert_array_equal(beam.tokens.numpy(), greedy.tokens.numpy())
    np.testing.assert_allclose(beam.log_probs.numpy(), greedy.log_probs.numpy(), atol=1e-6)
    np.testing.assert_allclose(beam.attention.numpy(), greedy.attention.numpy(), atol=1e-6)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_a_caption_comes_back_when_no_beam_ends(any_bundle, beam_size):
    bias = any_bundle.decoder.output_layer.bias
    saved = bias.numpy()
    never_end = saved.copy()
    never_end[2] = -1e4  # <end> can never win
    bias.assign(never_end)
    try:
        results = Decoding(any_bundle).caption_features(
            tf.random.normal((3, 64, 2048)), beam_size=beam_size, max_length=5
        )
    finally:
        bias.assign(saved)
    assert [len(r.tokens) for r in results] == [5, 5, 5]
    assert not any(r.ended for r in results)
    assert all(r.end_log_prob is None for r in results)


def test_beam_search_finds_a_caption_at_least_as_likely_as_greedy(any_bundle):
    features = tf.random.normal((8, 64, 2048), seed=3)
    decoding = Decoding(any_bundle, length_penalty=0.0)
    greedy = decoding.caption_features(features, beam_size=1)
    beam = decoding.caption_features(features, beam_size=5)
    better_or_equal = [b.score >= g.score - 1e-4 for b, g in zip(beam, greedy, strict=True)]
    assert sum(better_or_equal) >= 7  # beam search is not guaranteed, but nearly always


@pytest.mark.parametrize("beam_size", [1, 2])
def test_bundle_save_load_gives_identical_captions(
    any_bundle, encoder, images, tmp_path, beam_size
):
    before = Captioner(any_bundle, encoder).caption_batch(images, beam_size=beam_size)
    save_bundle(any_bundle, tmp_path / "bundle")
    loaded = load_bundle(tmp_path / "bundle")
    assert type(loaded.decoder) is type(any_bundle.decoder)
    after = Captioner(loaded, encoder).caption_batch(images, beam_size=beam_size)
    assert [r.tokens for r in after] == [r.tokens for r in before]
    assert any(r.tokens for r in after)
    for a, b in zip(after, before, strict=True):
        np.testing.assert_allclose(a.log_probs, b.log_probs, atol=1e-5)
        np.testing.assert_allclose(a.attention, b.attention, atol=1e-5)
    assert loaded.config == any_bundle.config
    assert loaded.encoder == encoder.info


def teacher_forced(decoder, features, tokens) -> tuple[tf.Tensor, tf.Tensor]:
    """Each token's log-probability (B, T) and the attention (B, T, L) of one teacher-forced
    pass of `decoder` over `tokens` (B, T), fed after <start>."""
    inputs = tf.concat([tf.fill([tokens.shape[0], 1], START_ID), tokens[:, :-1]], axis=1)
    logits, attention = decoder(features, inputs)
    return tf.gather(word_log_probs(logits), tokens, batch_dims=2), attention


def test_each_step_gives_what_teacher_forcing_gives(any_bundle):
    """The search's step (with the GRU state or the key/value cache) computes the same words,
    log-probabilities and attention as one teacher-forced pass over the caption it found."""
    decoder = any_bundle.decoder
    features = tf.random.normal((4, 64, 2048), seed=5)
    found = tf.function(lambda f: greedy_search(decoder, f, 8), jit_compile=True)(features)
    forced, attention = teacher_forced(decoder, features, found.tokens)
    emitted = (found.tokens != PAD_ID).numpy()
    assert emitted.sum() > 8
    np.testing.assert_allclose(forced.numpy()[emitted], found.log_probs.numpy()[emitted], atol=1e-4)
    np.testing.assert_allclose(
        attention.numpy()[emitted], found.attention.numpy()[emitted], atol=1e-5
    )


class SlotStamped:
    """A decoder whose attention row is the one-hot beam slot (of `beam_size`) each step ran in.

    Beam search reorders attention by parent beam as it reorders the state, so the rows of the
    caption it returns name the slot its ancestor held at each step: more than one slot means
    the caption's parents switched."""

    def __init__(self, decoder, beam_size: int) -> None:
        self.decoder, self.beam_size = decoder, beam_size
        self.vocab_size, self.output_layer = decoder.vocab_size, decoder.output_layer

    def encode(self, features):
        return self.decoder.encode(features)

    def initial_state(self, batch_size, max_length: int):
        return self.decoder.initial_state(batch_size, max_length)

    def step(self, tokens, memory, state, t):
        logits, state, weights = self.decoder.step(tokens, memory, state, t)
        slots = tf.range(tf.shape(tokens)[0]) % self.beam_size  # rows are (image, beam)
        return logits, state, tf.one_hot(slots, weights.shape[-1])  # (B·K, L)


@pytest.mark.parametrize("beam_size", [3, 4])
def test_each_beam_step_gives_what_teacher_forcing_gives(any_bundle, beam_size):
    """Beam search moves the decoder state with each beam's parent: every one of the K beams,
    whose ancestors switched beam slots, has the log-probabilities of a teacher-forced pass over
    its tokens, and so does the caption it returns."""
    decoder = any_bundle.decoder
    features = tf.constant(np.random.default_rng(0).normal(size=(4, 64, 2048)), tf.float32)
    stamped = SlotStamped(decoder, beam_size)
    beams = tf.function(lambda f: all_beams(stamped, f, 6, beam_size), jit_compile=True)(features)
    every = tf.reshape(beams.tokens, (4 * beam_size, 6))  # one row per (image, beam)
    forced, _ = teacher_forced(decoder, tf.repeat(features, beam_size, axis=0), every)
    emitted = (every != PAD_ID).numpy()
    found = tf.reshape(beams.log_probs, (4 * beam_size, 6)).numpy()
    np.testing.assert_allclose(forced.numpy()[emitted], found[emitted], atol=1e-4)
    slots = tf.reshape(beams.attention, (4 * beam_size, 6, -1)).numpy().argmax(-1)  # (B·K, T)
    switched = [len(set(row[kept])) > 1 for row, kept in zip(slots, emitted, strict=True)]
    assert sum(switched) >= beam_size  # untrained, flat output: parents switch, so it has teeth
    best = tf.function(lambda f: beam_search(decoder, f, 6, beam_size), jit_compile=True)(features)
    forced, _ = teacher_forced(decoder, features, best.tokens)
    kept = (best.tokens != PAD_ID).numpy()
    np.testing.assert_allclose(forced.numpy()[kept], best.log_probs.numpy()[kept], atol=1e-4)


def test_the_transformer_cache_changes_the_cost_not_the_captions(random_transformer):
    decoder = random_transformer.decoder
    features = tf.random.normal((4, 64, 2048), seed=6)
    cached = tf.function(lambda f: greedy_search(decoder, f, 8))(features)
    decoder.cache = False
    try:
        assert decoder.initial_state(4, 8).shape == (4, 8)  # the words so far, no keys or values
        recomputed = tf.function(lambda f: greedy_search(decoder, f, 8))(features)
    finally:
        decoder.cache = True
    np.testing.assert_array_equal(recomputed.tokens.numpy(), cached.tokens.numpy())
    np.testing.assert_allclose(recomputed.log_probs.numpy(), cached.log_probs.numpy(), atol=1e-5)
    np.testing.assert_allclose(recomputed.attention.numpy(), cached.attention.numpy(), atol=1e-5)


def test_sampling_repeats_with_its_seed_whatever_the_batch(any_bundle):
    decoding = Decoding(any_bundle)
    features = tf.random.normal((4, 64, 2048), seed=8)
    row = features[2:3]

    def sample(batch, pairs):
        return [r.tokens for r in decoding.caption_features(batch, sampling=Sampling.of(pairs))]

    greedy = [r.tokens for r in decoding.caption_features(features)]
    alone = sample(row, [(1.5, 42)])[0]
    assert sample(features, [(0, 1), (1.5, 7), (1.5, 42), (0, 3)])[2] == alone  # batch-blind
    assert sample(tf.concat([row] * 3, 0), [(1.5, 42)] * 3) == [alone] * 3
    mixed = sample(features, [(0, 1), (1.5, 7), (1.5, 42), (0, 3)])
    assert [mixed[0], mixed[3]] == [greedy[0], greedy[3]]  # temperature 0: the greedy caption
    draws = {tuple(sample(row, [(1.5, seed)])[0]) for seed in range(8)}
    assert len(draws) >= 3  # other seeds, other captions
    assert draws != {tuple(greedy[2])}


def test_sampling_is_refused_with_beams(random_bundle):
    with pytest.raises(ValueError, match="beam_size 1"):
        Decoding(random_bundle).search(
            tf.zeros((1, 64, 2048)), beam_size=3, sampling=Sampling.of([(0.7, 1)])
        )


def test_bundle_for_another_encoder_is_refused(random_bundle):
    other = Encoder("seed:1")
    assert other.fingerprint != random_bundle.encoder.fingerprint
    with pytest.raises(EncoderMismatch, match=random_bundle.encoder.fingerprint):
        Captioner(random_bundle, other)


def test_a_format_1_bundle_loads_as_the_gru_it_is(random_bundle, tmp_path):
    path = save_bundle(random_bundle, tmp_path / "bundle")
    config = json.loads((path / "config.json").read_text())
    assert config["format"] == 2 and config["model"]["decoder"] == "gru"
    for name in ("decoder", "layers", "heads", "ff_units", "dropout"):  # what format 1 lacked
        del config["model"][name]
    (path / "config.json").write_text(json.dumps(config | {"format": 1}))
    assert load_bundle(path).config == random_bundle.config


@pytest.mark.parametrize(
    ("model", "top", "refused"),
    [
        ({"decoder": "lstm"}, {}, "decoder 'lstm' is not one this version builds"),
        ({"experts": 8, "rotary": True}, {}, "does not know: experts, rotary"),
        ({"decoder": "transformer", "heads": 3}, {}, "does not divide into 3 heads"),
        ({}, {"format": 3}, "bundle format 3 is not one this version reads"),
    ],
)
def test_a_bundle_this_version_cannot_build_is_refused_by_name(
    random_bundle, tmp_path, model, top, refused
):
    path = save_bundle(random_bundle, tmp_path / "bundle")
    config = json.loads((path / "config.json").read_text())
    config["model"] |= model
    (path / "config.json").write_text(json.dumps(config | top))
    with pytest.raises(BundleError, match=refused):
        load_bundle(path)


def test_caption_batch_refuses_wrong_shapes(random_bundle, encoder):
    captioner = Captioner(random_bundle, encoder)
    with pytest.raises(ValueError, match="299"):
        captioner.caption_batch(np.zeros((2, 224, 224, 3), np.float32))
    assert captioner.caption_batch(np.zeros((0, 299, 299, 3), np.float32)) == []


@pytest.mark.parametrize("beam_size", [1, 3])
def test_xla_and_plain_graphs_agree(random_bundle, beam_size):
    features = tf.random.normal((5, 64, 2048), 5e-4, 8e-4, seed=4)
    xla = Decoding(random_bundle, xla=True).caption_features(features, beam_size)
    plain = Decoding(random_bundle, xla=False).caption_features(features, beam_size)
    assert [r.tokens for r in xla] == [r.tokens for r in plain]
    for a, b in zip(xla, plain, strict=True):
        np.testing.assert_allclose(a.log_probs, b.log_probs, atol=1e-4)


def test_padding_to_a_bucket_changes_no_caption(random_bundle):
    features = tf.random.normal((5, 64, 2048), 5e-4, 8e-4, seed=5)  # padded to 8
    decoding = Decoding(random_bundle)
    together = decoding.caption_features(features, beam_size=2)
    alone = [decoding.caption_features(features[i : i + 1], beam_size=2)[0] for i in range(5)]
    assert [r.tokens for r in together] == [r.tokens for r in alone]


def test_buckets_are_powers_of_two_then_multiples_of_64():
    from model.inference import bucket

    assert [bucket(n) for n in (1, 2, 3, 5, 32, 33, 64, 65, 130)] == [
        1,
        2,
        4,
        8,
        32,
        64,
        64,
        128,
        192,
    ]


def test_encoder_loads_a_local_weights_file(encoder, tmp_path):
    path = tmp_path / "inception.weights.h5"
    encoder.model.save_weights(path)
    from_file = Encoder(str(path))
    assert from_file.fingerprint == encoder.fingerprint
    assert from_file.info.weights == str(path)


def test_unknown_encoder_weights_are_refused():
    with pytest.raises(ValueError, match="imagenet"):
        Encoder("/no/such/weights.h5")


def test_caption_bytes_raises_the_image_error(random_bundle, encoder):
    from core.errors import ImageError

    with pytest.raises(ImageError) as info:
        Captioner(random_bundle, encoder).caption_bytes([b"GIF89a broken"])
    assert info.value.code in {"corrupt_image", "not_an_image"}


def test_attention_penalty_adds_to_the_loss(random_bundle):
    from model.training import caption_loss

    features = tf.random.normal((2, 64, 2048))
    tokens = tf.constant([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0]], tf.int32)
    plain = float(caption_loss(random_bundle.decoder, features, tokens))
    penalised = float(caption_loss(random_bundle.decoder, features, tokens, attention_reg=1.0))
    assert penalised > plain > 0
