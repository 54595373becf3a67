"""gunicorn's settings for the API: `gunicorn --config python:captioner.gunicorn_conf …`.

A request with `Prefer: wait` holds its connection up to `api.routes.jobs.MAX_WAIT_S` (60 s). Sync
workers hold one request each and are killed after 30 s, so a few waiting clients took the whole
server down. Threaded workers hold many connections each, and the timeout here only watches the
worker's main loop, set above the wait cap anyway. Measured on 2 cores (tests/test_serving.py):
100 clients waiting at once while /healthz, asked by another process, answered every time
within 9 to 44 ms (2026-11-27, 9 runs). Each waiting request holds a thread and one Redis
pub/sub connection, and a database connection only while it reads.

/metrics is not on the public port: gunicorn also listens on METRICS_PORT (on the interface of
the first --bind), where /metrics alone answers, and the public port answers /metrics with a
404 (`when_ready`, `MetricsApart`). The embedded server (`captioner api`, `captioner up`) has one
port, on loopback by default, and serves /metrics there.
"""

import json
import logging
import os
import tempfile
from pathlib import Path

from gunicorn import util
from gunicorn.sock import TCP6Socket, TCPSocket

# Threads: every waiting request holds one; 4 × 64 leaves room for 100 waiting requests even
# when the kernel hands one worker more than its share. Four processes rather than two: when
# 100 submissions arrive at once, fewer busy threads per process share each one's GIL, so
# /healthz waits less for it (2 cores, 100 sent in the same instant: /healthz at most 544 ms
# with 2 × 128, 101 ms with 4 × 64).
worker_class = "gthread"
workers = 4
threads = 64
timeout = 90  # above the 60 s wait cap, with a margin
graceful_timeout = 75  # on SIGTERM, waiting requests end (60 s at most) before the worker goes
keepalive = 5  # seconds an idle keep-alive connection stays open
# The longest request line (method, target, version): gunicorn's most, 8 KiB as in nginx; its
# default (4 KiB) refused a job list's cursor with a long filter (the stateful fuzz found it).
limit_request_line = 8190
# Codes for what gunicorn refuses before the app sees the request, by the status it gives.
REFUSALS = {
    400: "malformed_request",
    403: "forbidden",
    431: "headers_too_large",
    500: "internal_error",
    501: "unsupported_transfer_coding",
}


NOT_FOUND = "The requested URL was not found on the server."  # as the app's 404 begins


def problem(status: int, reason: str, message: str, code: str) -> bytes:
    """The API's problem document (api.errors), for answers gunicorn gives without the app."""
    document = {"type": "about:blank", "title": reason, "status": status, "detail": message}
    return json.dumps(document | {"code": code}).encode()


def write_problem(sock, status: int, reason: str, message: str) -> None:
    """gunicorn's answer to a request it refuses itself (a request line or header over its
    limits, a malformed request), as the API's problem document rather than an HTML page."""
    body = problem(status, reason, message or reason, REFUSALS.get(status, "malformed_request"))
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/problem+json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


# gunicorn has no setting for it: its workers call `util.write_error`, looked up at each call.
util.write_error = write_problem


def on_starting(server) -> None:
    """One shared, empty directory for the workers' metrics (prometheus-client's multiprocess
    mode: any worker's /metrics then answers for all of them)."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    for stale in Path(folder).glob("*.db"):  # a previous server's counts
        stale.unlink()


def post_fork(server, worker) -> None:
    """Each worker logs through core.logs (LOG_FORMAT), gunicorn's own lines included."""
    from core.logs import configure
    from core.settings import from_env

    settings = from_env()
    configure("api", settings.log_format, settings.log_level)
    for name in ("gunicorn.error", "gunicorn.access"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True


def child_exit(server, worker) -> None:
    """A worker that exits leaves its live gauges behind no more."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def when_ready(server) -> None:
    """Listen on METRICS_PORT too, before the workers start (they accept on every listener)."""
    listen_for_metrics(server, metrics_port())


def listen_for_metrics(server, port: int) -> None:
    """Add a listener on `port`, on the interface of the first --bind (0.0.0.0 in the image):
    Prometheus scrapes /metrics there. None when `port` is 0 or taken (as a worker's endpoint);
    the public port answers /metrics 404 all the same."""
    if not port or port in {local_port(listener.sock) for listener in server.LISTENERS}:
        return  # none asked, or inherited from the master this one replaces (USR2)
    first = server.cfg.address[0]
    host = first[0] if isinstance(first, tuple) else "0.0.0.0"  # a unix socket or an fd
    kind = TCP6Socket if util.is_ipv6(host) else TCPSocket
    try:
        listener = kind((host, port), server.cfg, server.log)
    except OSError as exc:
        server.log.warning("no metrics endpoint: port %d: %s", port, exc)
        return
    server.LISTENERS.append(listener)  # the workers, forked next, accept on it too
    server.log.info("Metrics at: %s", listener)


def post_worker_init(worker) -> None:
    """The worker's app answers /metrics on the metrics listener alone."""
    from api.routes.metrics import PATH

    worker.wsgi = MetricsApart(worker.wsgi, metrics_port(), PATH)


class MetricsApart:
    """A WSGI app in front of the API: a request for /metrics goes through on the metrics port
    alone, and that port passes nothing else; the rest is a 404 problem document."""

    def __init__(self, app, port: int, path: str) -> None:
        self.app, self.port, self.path = app, port, path

    def __call__(self, environ, start_response):
        on_metrics_port = local_port(environ["gunicorn.socket"]) == self.port
        if (environ.get("PATH_INFO") == self.path) == on_metrics_port:
            return self.app(environ, start_response)
        body = problem(404, "Not Found", NOT_FOUND, "not_found")
        headers = [("Content-Type", "application/problem+json"), ("Content-Length", str(len(body)))]
        start_response("404 Not Found", headers)
        return [body]


def metrics_port() -> int:
    """METRICS_PORT, from the settings (0: none)."""
    from core.settings import from_env

    return from_env().metrics_port


def local_port(connection) -> int | None:
    """The port a socket is bound to on this host (None for a unix socket)."""
    name = connection.getsockname()
    return name[1] if isinstance(name, tuple) else None
