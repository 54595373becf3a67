"""Test fixtures (not a test module): the API on real Postgres, Redis and moto S3.

Test modules load them with `pytest_plugins = ["tests.api_fixtures"]`: imported by name they would
read as unused imports shadowed by parameters. Helpers live in `tests.api_helpers`, because a
module imported before pytest loads it as a plugin misses assertion rewriting. Module scope gives
each test module its own database and S3 server.
"""

from __future__ import annotations

import pytest
import redis

from api import create_app
from core.settings import Settings
from store.migrate import upgrade
from tests.api_helpers import REDIS_URL
from tests.databases import fresh_postgres
from tests.s3 import ACCESS_KEY, REGION, SECRET_KEY, moto_s3_server


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    """Production-mode settings on throwaway Postgres, Redis and S3."""
    with moto_s3_server() as endpoint, fresh_postgres() as database_url:
        upgrade(database_url)
        yield Settings(
            data_dir=tmp_path_factory.mktemp("api"), database_url=database_url,
            broker_url=REDIS_URL, s3_bucket="api-tests", s3_endpoint_url=endpoint,
            s3_region=REGION, s3_access_key=ACCESS_KEY, s3_secret_key=SECRET_KEY,
            max_image_bytes=200_000, max_image_pixels=1_000_000,
        )  # fmt: skip


@pytest.fixture(scope="module")
def app(settings):
    """The app on those settings, with its bucket created."""
    app = create_app(settings)
    app.extensions["captioner"].blobs.ensure_bucket()
    yield app
    app.extensions["captioner"].db.dispose()


@pytest.fixture
def client(app):
    """A test client of the app."""
    return app.test_client()


@pytest.fixture
def queue():
    """The inference queue in Redis, emptied before each test."""
    connection = redis.Redis.from_url(REDIS_URL)
    connection.flushdb()
    yield connection
    connection.close()
