"""Shared fixtures: one seeded encoder, a small random bundle, a bundle trained via the CLI,
the one running stack (Postgres, Redis, moto S3, worker processes, the API) that the pipeline,
webhook and training tests share, and the API tests' app on real Postgres, Redis and moto S3.

The helpers the test modules share are in tests/helpers.py; no test module imports another.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import socket  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Before any test module imports it: its asserts then explain themselves as the tests' do.
pytest.register_assert_rewrite("tests.helpers")

# Big enough that 20 epochs learn the shapes grammar (validation BLEU-4 0.95 by the 10th, 0.99
# by the 20th), small enough for a few minutes on 2 cores.
SHAPES_IMAGES = 900


@pytest.fixture(scope="session")
def encoder():
    """The offline default encoder (seed:0), built once."""
    from model.encoder import Encoder

    return Encoder("seed:0")


def untrained_bundle(encoder, decoder: str):
    """An untrained bundle of one architecture with a 30-word vocabulary."""
    import keras

    from model.bundle import Bundle, FeatureNorm
    from model.config import ModelConfig
    from model.decoders import build_decoder
    from model.vocab import END_ID, SPECIALS, Vocabulary

    keras.utils.set_random_seed(7)
    vocab = Vocabulary(SPECIALS + tuple(f"word{i}" for i in range(26)))
    small = {"embedding_dim": 64, "heads": 4, "ff_units": 128} if decoder == "transformer" else {}
    config = ModelConfig(vocab_size=len(vocab), max_length=8, decoder=decoder, **small)
    norm = FeatureNorm(np.full(2048, 5e-4, np.float32), np.full(2048, 8e-4, np.float32))
    model = build_decoder(config)
    if decoder == "transformer":  # untrained, it ends every caption at once: make it talk
        bias = model.output_layer.bias
        bias.assign(bias.numpy() - 3.0 * (np.arange(len(vocab)) == END_ID))
    return Bundle(config, vocab, model, norm, encoder.info)


@pytest.fixture(scope="session")
def random_bundle(encoder):
    """An untrained GRU bundle with a 30-word vocabulary, for shape and plumbing tests."""
    return untrained_bundle(encoder, "gru")


@pytest.fixture(scope="session")
def random_bundle_dir(random_bundle, tmp_path_factory) -> Path:
    """That bundle saved, for workers started as processes."""
    from model.bundle import save_bundle

    return save_bundle(random_bundle, tmp_path_factory.mktemp("random") / "bundle")


@pytest.fixture(scope="session")
def random_transformer(encoder):
    """An untrained Transformer bundle with a 30-word vocabulary."""
    return untrained_bundle(encoder, "transformer")


@pytest.fixture(params=["gru", "transformer"])
def any_bundle(request, random_bundle, random_transformer):
    """Each architecture's untrained bundle in turn."""
    return random_bundle if request.param == "gru" else random_transformer


@pytest.fixture(scope="session")
def images() -> np.ndarray:
    """Four random preprocessed images (4, 299, 299, 3) in [-1, 1]."""
    return np.random.default_rng(0).uniform(-1, 1, (4, 299, 299, 3)).astype(np.float32)


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """A generated shapes dataset (80% train, 20% val), written by the CLI."""
    from captioner.cli import main

    out = tmp_path_factory.mktemp("shapes")
    assert main(["data", "shapes", str(out), "--size", str(SHAPES_IMAGES), "--seed", "1"]) == 0
    return out


@pytest.fixture(scope="session")
def trained_bundle(shapes_dir, tmp_path_factory) -> Path:
    """A bundle trained on the shapes set with `captioner train` (the slow part of the suite)."""
    from captioner.cli import main

    out = tmp_path_factory.mktemp("trained") / "bundle"
    args = ["train", "--data", str(shapes_dir), "--out", str(out), "--epochs", "20"]
    assert main([*args, "--patience", "6", "--cache", str(shapes_dir / "features")]) == 0
    return out


@pytest.fixture(scope="module", params=["postgres", "sqlite"])
def db(request, tmp_path_factory):
    """A migrated database of each kind, shared by a module's tests (store tests)."""
    from tests.helpers import migrated_database

    with migrated_database(request.param, tmp_path_factory.mktemp("sqlite")) as database:
        yield database


@pytest.fixture(scope="module")
def stack(request, tmp_path_factory):
    """The service as the test module's STACK describes it: keyword arguments of
    `harness.stack.running_stack` (workers, beat, settings), plus `trained_bundle=True` to
    serve the suite's trained bundle. A fresh database, Redis database and bucket per module."""
    from harness.stack import running_stack

    spec = dict(request.module.STACK)
    if spec.pop("trained_bundle", False):
        spec["model_bundle"] = request.getfixturevalue("trained_bundle")
    folder = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    with running_stack(folder, **spec) as running:
        yield running


@pytest.fixture(scope="module")
def receiver():
    """A webhook endpoint on loopback that answers from scripts and records every request."""
    from harness.receiver import receiver

    with receiver() as endpoint:
        yield endpoint


# The API on real Postgres, Redis and moto S3. Module scope gives each test module its own
# database, Redis database and S3 server (`harness.stack.services`); a module may override
# `settings` (the API tests of the SSRF guard allow no private address).


def no_dns(host: str, port: int) -> list[str]:
    """The SSRF guard's resolver in API tests: no name resolves, so no test asks a DNS server
    (a name that does not resolve passes at submit; the guard checks again before sending)."""
    raise socket.gaierror(socket.EAI_NONAME, f"{host}: tests resolve no names")


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    """Production-mode settings on throwaway Postgres, Redis and S3."""
    from harness.stack import services

    with services(
        tmp_path_factory.mktemp("api"), max_image_bytes=200_000, max_image_pixels=1_000_000
    ) as settings:
        yield settings


@pytest.fixture(scope="module")
def app(settings):
    """The app on those settings."""
    from api import create_app

    app = create_app(settings)
    app.extensions["captioner"].resolver = no_dns
    yield app
    app.extensions["captioner"].db.dispose()


@pytest.fixture(scope="module")
def api_key(app) -> str:
    """A key with every scope, for tenant "tenant-a" (`tests.helpers.OWNER`)."""
    from harness.stack import admin_key
    from tests.helpers import OWNER

    return admin_key(app.extensions["captioner"].db, OWNER)


@pytest.fixture
def client(app, api_key):
    """A test client of the app that sends `api_key`."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api_key}"
    return client


@pytest.fixture
def queue(settings):
    """The inference queue in Redis, emptied before each test."""
    import redis

    connection = redis.Redis.from_url(settings.broker_url)
    connection.flushdb()
    yield connection
    connection.close()
