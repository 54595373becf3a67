"""A webhook receiver on loopback for the tests and benchmarks: a real HTTP endpoint.

Each path answers from its own script of responses (then 200), after an optional delay, and
every request is recorded, so tests can see exactly what a receiver would see.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Reply:
    """One scripted answer."""

    status: int = 200
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    at: float  # time.monotonic()


class Receiver:
    """The endpoint: `script(path, replies…)`, `url(path)`, `wait(path, count)`."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self._scripts: dict[str, list[Reply]] = defaultdict(list)
        self._received: list[Received] = []
        self._changed = threading.Condition()

    def url(self, path: str) -> str:
        return self.base + path

    def script(self, path: str, *replies: Reply) -> str:
        """Answer `path` with `replies` in turn, then 200; returns its URL."""
        with self._changed:
            self._scripts[path] = list(replies)
        return self.url(path)

    def received(self, path: str) -> list[Received]:
        with self._changed:
            return [r for r in self._received if r.path == path]

    def wait(self, path: str, count: int, timeout: float = 60) -> list[Received]:
        """The first `count` requests to `path`; raises after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(found := [r for r in self._received if r.path == path]) < count:
                if not self._changed.wait(deadline - time.monotonic()):
                    raise TimeoutError(f"{path}: {len(found)} of {count} requests arrived")
            return found[:count]

    def _take(self, request: Received) -> Reply:
        with self._changed:
            self._received.append(request)
            self._changed.notify_all()
            script = self._scripts[request.path]
            return script.pop(0) if script else Reply()


@contextmanager
def receiver() -> Iterator[Receiver]:
    """A receiver on a free loopback port for the block."""
    state: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            headers = {name.lower(): value for name, value in self.headers.items()}
            reply = state._take(Received(self.path, headers, body, time.monotonic()))
            time.sleep(reply.delay_s)
            try:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except OSError:  # the sender gave up waiting (a timeout test)
                pass

        def log_message(self, *args) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128  # the default 5 resets connections under a burst

    server = Server(("127.0.0.1", 0), Handler)
    state = Receiver(server.server_port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
