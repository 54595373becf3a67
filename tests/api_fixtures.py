"""Test fixtures (not a test module): the API on real Postgres, Redis and moto S3.

Test modules load them with `pytest_plugins = ["tests.api_fixtures"]`: imported by name they would
read as unused imports shadowed by parameters. Helpers live in `tests.api_helpers`, because a
module imported before pytest loads it as a plugin misses assertion rewriting. Module scope gives
each test module its own database, Redis database and S3 server (`harness.stack.services`).
"""

from __future__ import annotations

import socket

import pytest
import redis

from api import create_app
from harness.stack import admin_key, services


def no_dns(host: str, port: int) -> list[str]:
    """The SSRF guard's resolver in API tests: no name resolves, so no test asks a DNS server
    (a name that does not resolve passes at submit; the guard checks again before sending)."""
    raise socket.gaierror(socket.EAI_NONAME, f"{host}: tests resolve no names")


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    """Production-mode settings on throwaway Postgres, Redis and S3."""
    with services(
        tmp_path_factory.mktemp("api"), max_image_bytes=200_000, max_image_pixels=1_000_000
    ) as settings:
        yield settings


@pytest.fixture(scope="module")
def app(settings):
    """The app on those settings."""
    app = create_app(settings)
    app.extensions["captioner"].resolver = no_dns
    yield app
    app.extensions["captioner"].db.dispose()


@pytest.fixture(scope="module")
def api_key(app) -> str:
    """A key with every scope, for tenant "tenant-a"."""
    return admin_key(app.extensions["captioner"].db, "tenant-a")


@pytest.fixture
def client(app, api_key):
    """A test client of the app that sends `api_key`."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api_key}"
    return client


@pytest.fixture
def queue(settings):
    """The inference queue in Redis, emptied before each test."""
    connection = redis.Redis.from_url(settings.broker_url)
    connection.flushdb()
    yield connection
    connection.close()
