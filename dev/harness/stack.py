"""A throwaway copy of the production stack, for the integration tests and the benchmarks.

`services()` makes production-mode settings on a fresh Postgres database (migrated), a Redis
database no other stack holds, and a moto S3 server with its bucket. `running_stack()` adds
worker processes, beat if asked, and the API on a loopback port, and hands back a `Stack`.
`production_api()` runs the API as production does instead: the Dockerfile's gunicorn command.
Everything is dropped afterwards. Needs the local Postgres and Redis servers and the dev extras
(moto).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit

import redis
from cryptography.fernet import Fernet
from sqlalchemy import func, select

from captioner.processes import (
    api_server,
    start_beat,
    start_process,
    start_worker,
    stop,
    wait_ready,
)
from captioner_client import Client
from core.broker import make_celery
from core.settings import Settings
from harness.gate import Gate
from harness.http import free_port, wait_for_http
from store import api_keys
from store.blobs import BlobStore, open_blob_store
from store.db import Database, create_database, drop_database
from store.migrate import upgrade
from store.tables import ALL_SCOPES, TERMINAL, Job

ROOT = Path(__file__).resolve().parents[2]  # the checkout the harness runs from
DOCKERFILE = ROOT / "Dockerfile"
# The server's maintenance database; each stack creates and drops its own database beside it.
POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_DATABASES = range(1, 16)  # database 0 holds only the locks that hand these out
ACCESS_KEY = SECRET_KEY = "testing"  # credentials moto accepts
REGION = "us-east-1"
MOTO_START_S = 20.0
GUNICORN_START_S = 30.0
CLIENT_TIMEOUT_S = 120.0  # above the API's longest hold (`Prefer: wait`, 60 s)
# Tests and benchmarks drive one key as fast as they can (50 requests at once in some tests):
# never refused, yet counted in two windows in Redis as the default limit is, so a request costs
# what it costs in production. Tests of the limit set their own.
UNTHROTTLED = "1000000/second;60000000/minute"


@contextmanager
def fresh_postgres() -> Iterator[str]:
    """Create an empty database, yield its URL, drop it afterwards."""
    name = f"captioner_test_{uuid.uuid4().hex[:12]}"
    create_database(POSTGRES_URL, name)
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        drop_database(POSTGRES_URL, name)


@contextmanager
def redis_database() -> Iterator[str]:
    """The URL of a Redis database no other stack holds, emptied before and after.

    The one place database numbers are handed out, to every process on this machine: a lock per
    number in database 0 holds the owner's pid, and is freed when that process is gone.
    """
    locks = redis.Redis.from_url(f"{REDIS_URL}/0")
    me = str(os.getpid())
    for number in REDIS_DATABASES:
        key = f"captioner:stack:redis-db:{number}"
        holder = locks.get(key)
        if holder is not None and not _alive(int(holder)):
            locks.delete(key)  # left by a process that was killed
        if locks.set(key, me, nx=True):
            break
    else:
        raise RuntimeError(f"every Redis database {REDIS_DATABASES} is held by another stack")
    url = f"{REDIS_URL}/{number}"
    redis.Redis.from_url(url).flushdb()
    try:
        yield url
    finally:
        redis.Redis.from_url(url).flushdb()
        if locks.get(key) == me.encode():
            locks.delete(key)
        locks.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, and someone else's
    return True


@contextmanager
def moto_s3_server() -> Iterator[str]:
    """Run `moto_server` on a free loopback port; yields its endpoint URL, stops it on exit."""
    url = f"http://127.0.0.1:{(port := free_port())}"
    with tempfile.TemporaryDirectory(prefix="moto-") as folder:
        log = Path(folder) / "moto.log"
        with log.open("wb") as out:
            command = [
                str(Path(sys.executable).parent / "moto_server"),
                "-H",
                "127.0.0.1",
                "-p",
                str(port),
            ]
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_http(url, MOTO_START_S, process, log)
            yield url
        finally:
            stop([process], timeout=10)


IMAGES = "images/"  # where single uploads' images lie (store.blob_keys.image_key)
LOOPBACK = "127.0.0.1/32"  # the one private address the stack's guard allows


def production_settings(
    data_dir: Path, database_url: str, broker_url: str, s3_endpoint: str, **overrides
) -> Settings:
    """Production-mode settings on these servers (with `overrides`): moto's credentials, a
    fresh secret key, the unthrottled rate limit; the bucket is made."""
    settings = Settings(
        data_dir=Path(data_dir),
        database_url=database_url,
        broker_url=broker_url,
        s3_bucket="stack",
        s3_endpoint_url=s3_endpoint,
        s3_region=REGION,
        s3_access_key=ACCESS_KEY,
        s3_secret_key=SECRET_KEY,
        secret_keys=Fernet.generate_key().decode(),
        rate_limit=UNTHROTTLED,
    ).with_overrides(**overrides)
    open_blob_store(settings).ensure_bucket()
    return settings


@contextmanager
def services(data_dir: Path, **overrides) -> Iterator[Settings]:
    """Production-mode settings (with `overrides`) on fresh Postgres, Redis and S3; webhook
    receivers on loopback are let through the SSRF guard."""
    with moto_s3_server() as endpoint, fresh_postgres() as database_url, redis_database() as url:
        upgrade(database_url)
        yield production_settings(
            data_dir, database_url, url, endpoint, **{"url_allow": LOOPBACK} | overrides
        )


@dataclass
class Stack:
    """The running service: its settings, an API client, its processes by name, and handles on
    the database, the blob store and the Celery app (to pause queues or send tasks)."""

    settings: Settings
    logs: Path
    client: Client | None = None  # the light client, on the API with an admin key
    api_key: str = ""  # that key
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start_worker(
        self, queue: str, name: str | None = None, wait: bool = True
    ) -> subprocess.Popen:
        """Start (or restart) the worker `name` (default `QUEUE@stack`) on `queue`."""
        name = worker_name(queue, name)
        log = self.log(name)
        if log.exists():  # a restart: keep the old log beside, so the ready mark is new
            log.replace(log.with_suffix(".previous.log"))
        self.processes[name] = start_worker(self.settings, log, name, queue)
        if wait:
            self.wait_ready(name)
        return self.processes[name]

    def wait_ready(self, name: str, timeout: float = 300) -> None:
        """Block until the worker logs that it consumes (its model loaded)."""
        wait_ready(self.processes[name], self.log(name), timeout)

    def start_beat(self) -> None:
        """Start beat (the sweepers' schedule)."""
        self.processes["beat"] = start_beat(self.settings, self.log("beat"))

    def log(self, name: str) -> Path:
        """The log file of the process `name`."""
        return self.logs / f"{name}.log"

    @cached_property
    def db(self) -> Database:
        """The stack's database."""
        return Database(self.settings.database_url)

    @cached_property
    def blobs(self) -> BlobStore:
        """The stack's blob store."""
        return open_blob_store(self.settings)

    @cached_property
    def celery(self):
        """A Celery app on the stack's broker."""
        return make_celery(self.settings)

    def close(self) -> None:
        """Stop every process and close connections."""
        stop(list(self.processes.values()))
        if self.client is not None:
            self.client.close()
        if "db" in self.__dict__:
            self.db.dispose()


@contextmanager
def running_stack(
    folder: Path,
    workers: Sequence[str | tuple[str, str]] = (),
    beat: bool = False,
    wait: bool | Collection[str] = True,
    **overrides,
) -> Iterator[Stack]:
    """The service in `folder` (data, logs): a worker per entry of `workers` (a queue, or
    (queue, name)), beat if asked, and the API. It starts once the workers are ready: all of
    them, or those `wait` names (an inference worker with no model yet waits for one)."""
    with services(Path(folder) / "data", **overrides) as settings:
        stack = Stack(settings, Path(folder) / "logs")
        try:
            if beat:
                stack.start_beat()
            entries = [(w, None) if isinstance(w, str) else w for w in workers]
            for queue, name in entries:
                stack.start_worker(queue, name, wait=False)
            names = [worker_name(queue, name) for queue, name in entries]
            for name in names if wait is True else [n for n in names if n in (wait or ())]:
                stack.wait_ready(name)
            with api_server(settings) as url:
                stack.api_key = admin_key(stack.db)
                stack.client = Client(url, stack.api_key, timeout=CLIENT_TIMEOUT_S)
                yield stack
        finally:
            stack.close()


def admin_key(db: Database, tenant: str = "stack") -> str:
    """A new key with every scope, for `tenant`."""
    with db.session() as session:
        return api_keys.create_key(session, tenant, ALL_SCOPES, "stack")[1]


def worker_name(queue: str, name: str | None = None) -> str:
    """A stack worker's node name: `name`, or `QUEUE@stack`."""
    return name or f"{queue}@stack"


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """The Dockerfile's (INSTRUCTION, arguments) pairs, with continuation lines joined and
    comments dropped."""
    text = path.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, args = line.strip().partition(" ")
            pairs.append((instruction.upper(), args.strip()))
    return pairs


def production_command() -> list[str]:
    """The Dockerfile's CMD: the command production runs (gunicorn with
    captioner/gunicorn_conf.py)."""
    return json.loads(next(args for name, args in dockerfile_instructions() if name == "CMD"))


@dataclass(frozen=True)
class ProductionApi:
    """The API as production runs it: its base URL and gunicorn's master process."""

    url: str
    process: subprocess.Popen


@contextmanager
def production_api(
    settings: Settings, log: Path, workers: int | None = None
) -> Iterator[ProductionApi]:
    """The Dockerfile's gunicorn command with `settings`, on a free loopback port (and with
    `workers` processes rather than gunicorn_conf's, if given), its output going to `log`.
    Yields once /healthz answers; stops gunicorn afterwards."""
    url = f"http://127.0.0.1:{free_port()}"
    command = production_command()
    command[0] = str(Path(sys.executable).parent / "gunicorn")  # this environment's
    command[command.index("--bind") + 1] = url.removeprefix("http://")
    if workers is not None:  # gunicorn's command line wins over its config file
        command[-1:-1] = ["--workers", str(workers)]
    process = start_process(settings, command, log)
    try:
        wait_for_http(f"{url}/healthz", GUNICORN_START_S, process, log)
        yield ProductionApi(url, process)
    finally:
        stop([process])


@dataclass(frozen=True)
class GatedStack:
    """The production stack with each server behind a gate: the API's URL, an admin key, the
    settings, the gates by dependency (`postgres`, `redis`, `blob_store`), the worker's process
    and its log, and the database."""

    url: str
    key: str
    settings: Settings
    gates: dict[str, Gate]
    worker: subprocess.Popen
    worker_log: Path
    db: Database

    def ended(self, ids: Sequence[str], timeout: float) -> tuple[Counter, datetime | None]:
        """The jobs' statuses once all are terminal (or at the timeout), and the latest
        `finished_at` among them."""
        wanted = Job.id.in_([uuid.UUID(i) for i in ids])
        query = select(Job.status, func.count(), func.max(Job.finished_at)).where(wanted)
        deadline = time.monotonic() + timeout
        while True:
            with self.db.session() as session:
                rows = session.execute(query.group_by(Job.status)).all()
            statuses = Counter({status: count for status, count, _ in rows})
            if sum(statuses[s] for s in TERMINAL) == len(ids) or time.monotonic() > deadline:
                return statuses, max((at for *_, at in rows if at is not None), default=None)
            time.sleep(0.5)

    def orphan_images(self) -> int:
        """Images in the store less jobs in the database (single uploads, as the fault suite
        and bench_faults send; below 0: jobs without their image)."""
        with self.db.session() as session:
            jobs = session.scalar(select(func.count()).select_from(Job))
        return len(self.blobs.list(IMAGES)) - jobs

    @cached_property
    def blobs(self) -> BlobStore:
        return open_blob_store(self.settings)


@contextmanager
def gated_stack(
    folder: Path, bundle: Path, api_workers: int | None = 2, **overrides
) -> Iterator[GatedStack]:
    """The API as the Dockerfile runs it (`api_workers` processes; None: its config's), an
    inference worker serving a stand-in model (20 ms a batch) from `bundle`, and beat, on fresh
    servers each reached through a `Gate`; every image is an object, so the blob store is on
    every job's path. `overrides` change the settings."""
    with ExitStack() as stack:
        endpoint = stack.enter_context(moto_s3_server())
        database = stack.enter_context(fresh_postgres())
        broker = stack.enter_context(redis_database())
        upgrade(database)
        gates = {
            "postgres": stack.enter_context(Gate(urlsplit(database).port or 5432)),
            "redis": stack.enter_context(Gate(urlsplit(broker).port or 6379)),
            "blob_store": stack.enter_context(Gate(urlsplit(endpoint).port)),
        }
        defaults = {"inline_image_bytes": 0, "bench_standin_model_ms": 20, "url_allow": LOOPBACK}
        settings = production_settings(
            folder / "data",
            gates["postgres"].through(database),
            gates["redis"].through(broker),
            gates["blob_store"].through(endpoint),
            **defaults | {"model_bundle": bundle} | overrides,
        )
        log = folder / "worker.log"
        worker = start_worker(settings, log, "inference@gated")
        beat = start_beat(settings, folder / "beat.log")
        stack.callback(stop, [worker, beat])
        wait_ready(worker, log)
        api = stack.enter_context(production_api(settings, folder / "api.log", api_workers))
        db = Database(database)
        stack.callback(db.dispose)
        yield GatedStack(api.url, admin_key(db), settings, gates, worker, log, db)
