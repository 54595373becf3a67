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
from model.inference import Captioner, Decoding
from model.search import beam_search, greedy_search


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


def test_teacher_forcing_shapes(random_bundle):
    features = tf.random.normal((3, 64, 2048))
    tokens = tf.constant(np.random.default_rng(0).integers(4, 30, (3, 7)), tf.int32)
    logits, weights = random_bundle.decoder(features, tokens)
    assert logits.shape == (3, 7, 30) and weights.shape == (3, 7, 64)
    np.testing.assert_allclose(weights.numpy().sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_caption_batch_results_are_consistent(random_bundle, encoder, images, beam_size):
    results = Captioner(random_bundle, encoder).caption_batch(images, beam_size=beam_size)
    assert len(results) == 4
    for result in results:
        assert result.text == " ".join(result.tokens)
        assert len(result.tokens) == len(result.log_probs) <= random_bundle.config.max_length
        assert result.attention.shape == (len(result.tokens), 64)
        assert result.attention.dtype == np.float32
        np.testing.assert_allclose(result.attention.sum(-1), 1.0, rtol=1e-4)
        assert all(lp <= 0 for lp in result.log_probs)
        assert not {"<pad>", "<start>", "<end>"} & set(result.tokens)


def test_beam_of_one_equals_greedy(random_bundle):
    features = tf.random.normal((6, 64, 2048), seed=1)
    greedy = tf.function(lambda f: greedy_search(random_bundle.decoder, f, 8))(features)
    beam = tf.function(lambda f: beam_search(random_bundle.decoder, f, 8, 1))(features)
    np.testing.assert_array_equal(beam.tokens.numpy(), greedy.tokens.numpy())
    np.testing.assert_allclose(beam.log_probs.numpy(), greedy.log_probs.numpy(), atol=1e-6)
    np.testing.assert_allclose(beam.attention.numpy(), greedy.attention.numpy(), atol=1e-6)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_a_caption_comes_back_when_no_beam_ends(random_bundle, beam_size):
    decoder = random_bundle.decoder
    saved = decoder.fc2.bias.numpy()
    never_end = saved.copy()
    never_end[2] = -1e4  # <end> can never win
    decoder.fc2.bias.assign(never_end)
    try:
        results = Decoding(random_bundle).caption_features(
            tf.random.normal((3, 64, 2048)), beam_size=beam_size, max_length=5
        )
    finally:
        decoder.fc2.bias.assign(saved)
    assert [len(r.tokens) for r in results] == [5, 5, 5]
    assert not any(r.ended for r in results)
    assert all(r.end_log_prob is None for r in results)


def test_beam_search_finds_a_caption_at_least_as_likely_as_greedy(random_bundle):
    features = tf.random.normal((8, 64, 2048), seed=3)
    decoding = Decoding(random_bundle, length_penalty=0.0)
    greedy = decoding.caption_features(features, beam_size=1)
    beam = decoding.caption_features(features, beam_size=5)
    better_or_equal = [b.score >= g.score - 1e-4 for b, g in zip(beam, greedy, strict=True)]
    assert sum(better_or_equal) >= 7  # beam search is not guaranteed, but nearly always


def test_bundle_save_load_gives_identical_captions(random_bundle, encoder, images, tmp_path):
    before = Captioner(random_bundle, encoder).caption_batch(images, beam_size=2)
    save_bundle(random_bundle, tmp_path / "bundle")
    loaded = load_bundle(tmp_path / "bundle")
    after = Captioner(loaded, encoder).caption_batch(images, beam_size=2)
    assert [r.tokens for r in after] == [r.tokens for r in before]
    for a, b in zip(after, before, strict=True):
        np.testing.assert_allclose(a.log_probs, b.log_probs, atol=1e-5)
        np.testing.assert_allclose(a.attention, b.attention, atol=1e-5)
    assert loaded.config == random_bundle.config
    assert loaded.encoder == encoder.info


def test_bundle_for_another_encoder_is_refused(random_bundle):
    other = Encoder("seed:1")
    assert other.fingerprint != random_bundle.encoder.fingerprint
    with pytest.raises(EncoderMismatch, match=random_bundle.encoder.fingerprint):
        Captioner(random_bundle, other)


def test_a_format_1_bundle_loads_as_the_gru_it_is(random_bundle, tmp_path):
    path = save_bundle(random_bundle, tmp_path / "bundle")
    config = json.loads((path / "config.json").read_text())
    assert config["format"] == 2 and config["model"]["decoder"] == "gru"
    del config["model"]["decoder"]
    (path / "config.json").write_text(json.dumps(config | {"format": 1}))
    assert load_bundle(path).config == random_bundle.config


@pytest.mark.parametrize(("model", "top", "refused"), [
    ({"decoder": "lstm"}, {}, "decoder 'lstm' is not one this version builds"),
    ({"heads": 8, "layers": 2}, {}, "does not know: heads, layers"),
    ({}, {"format": 3}, "bundle format 3 is not one this version reads"),
])  # fmt: skip
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
