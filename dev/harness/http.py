"""Servers on loopback: a free port, and waiting until a server answers HTTP."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from captioner.processes import tail


def free_port() -> int:
    """A loopback port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(
    url: str,
    timeout: float = 30.0,
    process: subprocess.Popen | None = None,
    log: Path | None = None,
) -> None:
    """Block until `url` answers with any HTTP status; raise (with the log's tail) if `process`
    exits first or nothing answers within `timeout` seconds. No proxies: it is on loopback."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {process.returncode}" + said(log))
        try:
            opener.open(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # any HTTP status means the server is up
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s" + said(log))


def said(log: Path | None) -> str:
    """The end of a server's log, to explain why it is not answering."""
    return f":\n{tail(log)}" if log is not None and log.exists() else ""
