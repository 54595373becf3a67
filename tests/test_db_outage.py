"""Postgres away: on a private Postgres server the test stops and starts, the API answers 503
JSON with Retry-After, leaves no image in the blob store, and serves again once the server is
back, with nothing else restarted. Real Redis and moto S3."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from glob import glob
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy import event
from sqlalchemy import exc as sa_exc

from api import create_app
from api.services import Services
from core.settings import Settings
from harness.http import free_port
from harness.stack import (
    admin_key,
    moto_s3_server,
    production_settings,
    redis_database,
)
from store.blobs import open_blob_store
from store.db import Database
from store.migrate import upgrade
from store.tables import Job
from tests.helpers import b64, png

BINARIES = sorted(glob("/usr/lib/postgresql/*/bin/pg_ctl"))
pytestmark = pytest.mark.skipif(not BINARIES, reason="no Postgres server binaries here")


def as_postgres(command: list[str]) -> list[str]:
    """`command` as the postgres user when run as root (initdb refuses root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class PrivatePostgres:
    """A Postgres server of our own in a temporary folder, to stop and start at will."""

    def __init__(self, folder: Path) -> None:
        self.bin = Path(BINARIES[-1]).parent
        self.data, self.port = folder / "data", free_port()
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust"])

    def _run(self, command: list[str]) -> None:
        subprocess.run(as_postgres(command), check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"
        self._run(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-o",
                options,
                "-w",
                "-l",
                str(self.data / "server.log"),
                "start",
            ]
        )

    def stop(self) -> None:
        """Stop the server (fast: open connections are cut)."""
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A running private server, stopped and removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="pg-outage-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    try:
        server = PrivatePostgres(folder)
        server.start()
        try:
            yield server
        finally:
            stop = [str(server.bin / "pg_ctl"), "-D", str(server.data), "-m", "immediate", "stop"]
            subprocess.run(as_postgres(stop), capture_output=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def outage(tmp_path_factory):
    """(server, settings): production-mode settings on a private Postgres, Redis and moto S3;
    every upload an object in the blob store (the tests count the blobs a refusal leaves)."""
    with private_postgres() as server, moto_s3_server() as endpoint, redis_database() as broker:
        upgrade(server.url)
        data_dir = tmp_path_factory.mktemp("outage")
        settings = production_settings(data_dir, server.url, broker, endpoint, inline_image_bytes=0)
        yield server, settings


def blob_count(settings: Settings) -> int:
    return len(open_blob_store(settings).list(""))


def assert_unavailable(response) -> None:
    assert response.status_code == 503, response.get_json()
    assert response.get_json()["code"] == "database_unavailable"
    assert int(response.headers["Retry-After"]) > 0


def test_database_away_gives_503_with_retry_after_then_recovers(outage):
    server, settings = outage
    app = create_app(settings)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {admin_key(app.extensions['captioner'].db)}"}
    job_id = client.post("/v1/jobs", json={"image": b64(png())}, headers=headers).get_json()["id"]
    blobs = blob_count(settings)
    server.stop()
    try:
        assert_unavailable(client.get(f"/v1/jobs/{job_id}", headers=headers))
        assert_unavailable(client.post("/v1/jobs", json={"image": b64(png())}, headers=headers))
        assert_unavailable(
            client.post("/v1/batches", json={"images": [b64(png())] * 2}, headers=headers)
        )
        assert client.get("/healthz").status_code == 200  # the process itself is fine
        assert blob_count(settings) == blobs
    finally:
        server.start()
    # The same app, nothing restarted: the pool's pre-ping replaces the dead connections.
    assert client.get(f"/v1/jobs/{job_id}", headers=headers).status_code == 200
    again = client.post("/v1/jobs", json={"image": b64(png())}, headers=headers)
    assert again.status_code == 202 and again.get_json()["status"] == "queued"
    assert blob_count(settings) == blobs + 1
    app.extensions["captioner"].db.dispose()


def test_a_restart_between_requests_costs_no_request(outage):
    """Postgres restarts while the pool's connections sit idle: the next requests get fresh
    connections, not an error (the pool pings a connection before handing it out)."""
    server, settings = outage
    app = create_app(settings)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {admin_key(app.extensions['captioner'].db)}"}
    job_id = client.post("/v1/jobs", json={"image": b64(png())}, headers=headers).get_json()["id"]
    server.stop()
    server.start()
    for _ in range(3):  # the pool holds the connection of each request before
        assert client.get(f"/v1/jobs/{job_id}", headers=headers).status_code == 200
    again = client.post("/v1/jobs", json={"image": b64(png())}, headers=headers)
    assert again.status_code == 202, again.get_json()
    app.extensions["captioner"].db.dispose()


class InsertsFail(Database):
    """A database that loses its connection when jobs are inserted: after the key was checked,
    so the submission's image is already stored."""

    @contextmanager
    def session(self):
        with super().session() as session:
            event.listen(session, "after_flush", self._drop)
            yield session

    @staticmethod
    def _drop(session, _context) -> None:
        if any(isinstance(row, Job) for row in session.new):
            lost = psycopg2.OperationalError("server closed the connection unexpectedly")
            raise sa_exc.OperationalError("INSERT INTO jobs …", {}, lost)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/jobs", {"image": b64(png())}),
        ("/v1/batches", {"images": [b64(png((30 + i, 20))) for i in range(40)]}),  # two packs
    ],
)
def test_a_submission_refused_after_its_image_was_stored_leaves_no_blob(outage, path, body):
    _, settings = outage
    base = Services.from_settings(settings)
    failing = InsertsFail(settings.database_url)
    failing.after_commit = base.db.after_commit
    app = create_app(settings, replace(base, db=failing))
    headers = {"Authorization": f"Bearer {admin_key(base.db)}"}
    blobs = blob_count(settings)
    assert_unavailable(app.test_client().post(path, json=body, headers=headers))
    assert blob_count(settings) == blobs
    failing.dispose()
    base.db.dispose()
