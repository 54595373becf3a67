"""Production serving holds: the Dockerfile's own gunicorn command, on real Postgres, Redis, moto
S3 and an inference worker whose model is a stand-in of fixed cost, keeps 100 clients waiting
with a bare `Prefer: wait` and still answers /healthz quickly; the command is the same in the
Dockerfile, docker-compose.yml and the docs. /metrics is on METRICS_PORT alone."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import yaml
from gunicorn.config import Config

from api.routes.jobs import MAX_WAIT_S, prefer_wait
from captioner import gunicorn_conf
from captioner.processes import start_worker, stop, wait_ready
from harness.http import free_port
from harness.stack import admin_key, production_api, production_command, services
from store.db import Database
from tests.helpers import b64, png

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 100
HEALTHZ_MAX_MS = 100.0  # every answer but one (measured: the slowest of 9 runs took 9 to 44 ms)
# The one: on a 2-core machine shared with the stack a single answer is sometimes slow (12 to
# 162 ms in 12 runs, once 510 ms among 278 answers with a median of 2.7 ms).
HEALTHZ_CAP_MS = 1000.0
WARM_UP = 20  # requests before the measure
STANDIN_MS = 3000  # per batch of up to 32: the first answer comes after every client has asked
# Between two clients' arrivals: all 100 come within 2 s. At 10 ms (100 submissions a second on
# these 2 cores, shared with Postgres, moto, the worker and the clients) /healthz peaked at 55 to
# 96 ms; all 100 at once, at 100 to 550 ms (README: Production).
RAMP_S = 0.02
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("", 0.0),
        ("wait", MAX_WAIT_S),
        ("WAIT", MAX_WAIT_S),
        ("respond-async, wait", MAX_WAIT_S),
        ("wait; handling=lenient", MAX_WAIT_S),
        ("wait=10", 10.0),
        ("wait = 3 , x", 3.0),
        ("wait=600", MAX_WAIT_S),
        ("wait=abc", 0.0),
        ("nowait", 0.0),
        ("wait=1e3", 0.0),
    ],
)
def test_prefer_wait_bare_means_the_cap(header, seconds):
    assert prefer_wait(header) == seconds


def test_compose_and_the_docs_run_the_dockerfiles_command():
    command = production_command()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert compose["services"]["api"]["command"] == command
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    shown = " ".join(f'"{a}"' if "(" in a else a for a in command)
    assert any(shown in page.read_text(encoding="utf-8") for page in pages)
    assert command[:3] == ["gunicorn", "--config", "python:captioner.gunicorn_conf"]


def test_gunicorn_holds_requests_longer_than_the_wait_cap():
    assert gunicorn_conf.worker_class in {"gthread", "gevent", "eventlet", "uvicorn"}
    assert gunicorn_conf.timeout > MAX_WAIT_S and gunicorn_conf.graceful_timeout > MAX_WAIT_S
    assert gunicorn_conf.threads * gunicorn_conf.workers >= 2 * CLIENTS
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert compose["services"]["api"]["stop_grace_period"] == f"{gunicorn_conf.graceful_timeout}s"


@pytest.mark.parametrize(
    "metrics_port, arrived_on, path, passed",
    [
        (9100, 8000, "/v1/jobs", True),
        (9100, 8000, "/metrics", False),  # the public port: a 404
        (9100, 9100, "/metrics", True),
        (9100, 9100, "/healthz", False),  # the metrics port serves nothing else
        (9100, 9100, "/metrics/", False),
        (0, 8000, "/metrics", False),  # no metrics port: /metrics nowhere
    ],
)
def test_metrics_pass_on_the_metrics_port_alone(metrics_port, arrived_on, path, passed):
    statuses = []
    app = gunicorn_conf.MetricsApart(lambda environ, start: [b"app"], metrics_port, "/metrics")
    connection = SimpleNamespace(getsockname=lambda: ("127.0.0.1", arrived_on))
    environ = {"gunicorn.socket": connection, "PATH_INFO": path}
    body = b"".join(app(environ, lambda status, headers: statuses.append(status)))
    if passed:
        assert body == b"app" and not statuses
    else:
        assert statuses == ["404 Not Found"] and json.loads(body)["code"] == "not_found"


def arbiter(bind: str) -> SimpleNamespace:
    """What listen_for_metrics reads of gunicorn's arbiter: settings, log, listeners."""
    cfg = Config()
    cfg.set("bind", [bind])
    return SimpleNamespace(cfg=cfg, log=logging.getLogger("test.gunicorn"), LISTENERS=[])


def test_the_metrics_listener_opens_beside_the_api_or_not_at_all(caplog):
    server, port = arbiter("127.0.0.1:8000"), free_port()
    gunicorn_conf.listen_for_metrics(server, port)
    (listener,) = server.LISTENERS
    try:
        assert listener.sock.getsockname() == ("127.0.0.1", port)  # the API's interface
        gunicorn_conf.listen_for_metrics(server, port)  # inherited from an old master: kept
        assert len(server.LISTENERS) == 1
        taken = arbiter("127.0.0.1:8000")
        with caplog.at_level(logging.WARNING):
            gunicorn_conf.listen_for_metrics(taken, port)  # a warning; the API goes on
        assert not taken.LISTENERS and f"no metrics endpoint: port {port}" in caplog.text
        gunicorn_conf.listen_for_metrics(taken, 0)
        assert not taken.LISTENERS
    finally:
        listener.close()


@pytest.fixture(scope="module")
def bundle(random_bundle, tmp_path_factory) -> Path:
    """The untrained bundle on disk: the stand-in model answers, the bundle is only loaded."""
    from model.bundle import save_bundle

    return save_bundle(random_bundle, tmp_path_factory.mktemp("serving") / "bundle")


@pytest.fixture(scope="module")
def served(bundle, tmp_path_factory):
    """(base URL, API key): the Dockerfile's gunicorn command on a stack with one inference
    worker whose model is the stand-in."""
    folder = tmp_path_factory.mktemp("serving-stack")
    overrides = {"model_bundle": bundle, "bench_standin_model_ms": STANDIN_MS}
    with services(folder / "data", **overrides) as settings:
        worker = start_worker(settings, folder / "worker.log", "inference@serving")
        db = Database(settings.database_url)
        try:
            with production_api(settings, folder / "gunicorn.log") as api:
                wait_ready(worker, folder / "worker.log")
                yield api.url, admin_key(db)
        finally:
            stop([worker])
            db.dispose()


def submit_and_wait(
    url: str, key: str, image: bytes, delay: float = 0.0
) -> tuple[int, dict, float, float]:
    """POST one image with a bare `Prefer: wait` after `delay` seconds: the status, the body,
    and when the request was sent and answered."""
    time.sleep(delay)
    sent = time.monotonic()
    request = urllib.request.Request(
        f"{url}/v1/jobs",
        data=json.dumps({"image": b64(image)}).encode(),
        method="POST",
        headers={
            "Authorization": f"Bearer {key}",
            "Prefer": "wait",
            "Content-Type": "application/json",
        },
    )
    with _opener.open(request, timeout=MAX_WAIT_S + 30) as response:
        return response.status, json.loads(response.read()), sent, time.monotonic()


# /healthz is asked by a process of its own, as a load balancer or the kubelet would. Asked from
# this process, its answers also waited for this GIL behind the 100 client threads: the slowest
# took 40 to 270 ms while the server's own histogram put every /healthz under 25 ms.
POLLER = """
import json, sys, time, urllib.request
from pathlib import Path
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
url, stop, took = sys.argv[1], Path(sys.argv[2]), []
while not stop.exists():
    started = time.perf_counter()
    with opener.open(url + "/healthz", timeout=5) as response:
        assert response.status == 200
    took.append((time.perf_counter() - started) * 1000)
    time.sleep(0.05)
print(json.dumps(took))
"""


@contextmanager
def polling_healthz(url: str, folder: Path) -> Iterator[list[float]]:
    """Poll /healthz every 50 ms from another process while the block runs; the list fills with
    the milliseconds of each answer when the block ends."""
    stop, took = folder / "stop", []
    stop.unlink(missing_ok=True)
    poller = subprocess.Popen(
        [sys.executable, "-c", POLLER, url, str(stop)], stdout=subprocess.PIPE, text=True
    )
    try:
        yield took
    finally:
        stop.touch()
        took.extend(json.loads(poller.communicate(timeout=30)[0]))


def test_100_waiting_clients_get_captions_while_healthz_stays_fast(served, tmp_path):
    url, key = served
    images = [png((40 + i % 50, 30 + i // 50)) for i in range(CLIENTS)]
    with ThreadPoolExecutor(CLIENTS) as pool:
        # Warm, as a server in production is: each thread's first request pays for its set-up.
        list(pool.map(lambda image: submit_and_wait(url, key, image), images[:WARM_UP]))
        with polling_healthz(url, tmp_path) as latencies:
            started = time.monotonic()
            answers = list(
                pool.map(lambda i: submit_and_wait(url, key, images[i], i * RAMP_S), range(CLIENTS))
            )
            elapsed = time.monotonic() - started
    assert [status for status, *_ in answers] == [200] * CLIENTS
    assert {body["status"] for _, body, *_ in answers} == {"succeeded"}
    assert all(body["result"]["caption"] == "a stand-in caption" for _, body, *_ in answers)
    last_sent, first_answered = max(a[2] for a in answers), min(a[3] for a in answers)
    print(
        f"\n{CLIENTS} clients in {elapsed:.1f} s, all waiting at once for "
        f"{first_answered - last_sent:.2f} s; /healthz answered {len(latencies)} times, "
        f"max {max(latencies):.1f} ms, median {sorted(latencies)[len(latencies) // 2]:.1f} ms"
    )
    assert last_sent < first_answered  # every client was held at the same moment
    slowest, next_slowest = sorted(latencies)[-1], sorted(latencies)[-2]
    assert next_slowest < HEALTHZ_MAX_MS and slowest < HEALTHZ_CAP_MS


@pytest.mark.parametrize(
    "target, headers, status, code",
    [
        # over gunicorn's 4 KiB default, under its limit: the app answers (the cursor is bad)
        ("/v1/jobs?cursor=" + "%C3%A9" * 1200, {}, 400, "invalid_cursor"),
        ("/v1/jobs?cursor=" + "x" * 9000, {}, 400, "malformed_request"),  # over every limit
        ("/v1/jobs", {"X-Big": "x" * 9000}, 431, "headers_too_large"),
    ],
    ids=["long-target", "too-long-target", "too-large-header"],
)
def test_what_gunicorn_refuses_itself_is_a_problem_document(served, target, headers, status, code):
    url, key = served
    answer = httpx.get(url + target, headers={"Authorization": f"Bearer {key}"} | headers)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["code"] == code
