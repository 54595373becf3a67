"""A loopback TCP gate in front of a server, for outages injected from outside the service.

`Gate(target_port)` listens on a port of its own and pipes each connection to the target.
`close()` makes the server unreachable as a stopped one is (new connections refused, open
ones cut) while the server itself keeps its state; `open()` lets connections through again.
"""

from __future__ import annotations

import socket
import struct
import threading
from urllib.parse import urlsplit

from harness.http import free_port

CHUNK = 65536


class Gate:
    """A TCP proxy on 127.0.0.1:`port` to 127.0.0.1:`target`, which can be closed and opened."""

    def __init__(self, target: int) -> None:
        self.target, self.port = target, free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()  # every socket of the piped connections

    def __enter__(self) -> Gate:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def through(self, url: str) -> str:
        """`url` (of the target, on loopback) sent through the gate: its port replaced."""
        parts = urlsplit(url)
        host = parts.netloc.rsplit(":", 1)[0] if parts.port else parts.netloc  # user@ kept
        return parts._replace(netloc=f"{host}:{self.port}").geturl()

    @property
    def is_open(self) -> bool:
        return self._listener is not None

    def open(self) -> None:
        """Accept connections again."""
        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: reopens
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        """Refuse new connections and cut the open ones."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._open = self._open, set()
        for each in [listener, *sockets]:
            if each is not None:
                _shut(each)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                _shut(client)
                continue
            with self._lock:
                if self._listener is not listener:  # closed meanwhile
                    _shut(client)
                    _shut(server)
                    return
                self._open |= {client, server}
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy bytes from `source` to `sink` until either ends."""
    try:
        while data := source.recv(CHUNK):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _shut(sink)
        _shut(source)


def _shut(each: socket.socket) -> None:
    """Close at once: a listener stops accepting; a connection is reset (no FIN_WAIT state left
    holding the port, which the gate binds again when it opens)."""
    try:
        each.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        each.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    each.close()
