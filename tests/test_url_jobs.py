"""Jobs by URL end to end: a real inference worker fetches each `image_url` from a loopback
server (127.0.0.1, the stack's one allowed private address) and captions it, or fails only that
job with the fetch's code. A redirect to 127.0.0.2 (outside the allow-list) is never connected."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.helpers import png

STACK = {"workers": ["inference"], "trained_bundle": True, "batch_max_size": 4,
         "bench_standin_model_ms": 10}  # fmt: skip


@pytest.fixture(scope="module")
def trap() -> Iterator[socket.socket]:
    """A listener on 127.0.0.2, outside the allow-list: it must never see a connection."""
    with socket.create_server(("127.0.0.2", 0)) as listener:
        yield listener


@pytest.fixture(scope="module")
def origin(trap) -> Iterator[str]:
    """A loopback HTTP server with an image, a redirect to the trap, text and a huge length."""
    away = f"http://127.0.0.2:{trap.getsockname()[1]}/secret"
    routes = {
        "/cat.png": (200, {}, png()),
        "/away": (302, {"Location": away}, b""),
        "/page": (200, {"Content-Type": "image/png"}, b"<html>hi</html>"),
        "/huge": (200, {"Content-Length": str(1 << 30)}, b""),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            status, headers, body = routes.get(self.path, (404, {}, b""))
            self.send_response(status)
            headers.setdefault("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_each_url_job_succeeds_or_fails_alone_with_its_code(stack, origin, trap):
    paths = {
        "/cat.png": None,
        "/away": "url_forbidden",
        "/page": "not_an_image",
        "/huge": "url_too_large",
        "/gone": "url_unreachable",
    }
    batch = stack.client.submit_batch(urls=[origin + path for path in paths])
    ended = [job.raw for job in stack.client.wait_all(batch.jobs, timeout=120, progress=False)]
    for job, code in zip(ended, paths.values(), strict=True):
        if code is None:
            assert job["status"] == "succeeded" and job["result"]["caption"], job
        else:
            assert (job["status"], job["error"]["code"]) == ("failed", code), job
    assert select.select([trap], [], [], 0.2)[0] == []  # the redirect target never connected
    again = stack.client.submit(url=f"{origin}/cat.png")
    assert stack.client.wait(again, timeout=120).status == "succeeded"
