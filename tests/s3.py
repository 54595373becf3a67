"""Test helper (not a test module): a real moto S3 server on a loopback port."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Credentials moto accepts; tests pass them to S3BlobStore explicitly.
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"
START_TIMEOUT_S = 20.0


def free_port() -> int:
    """A loopback port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    # No proxies: the server is on loopback whatever the environment says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        opener.open(url, timeout=1).close()
    except urllib.error.HTTPError:
        return True  # any HTTP status means the server is up
    except OSError:
        return False
    return True


def _wait_until_up(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}:\n{_tail(log)}")
        if _answers(url):
            return
        time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer within {START_TIMEOUT_S} s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def moto_s3_server() -> Iterator[str]:
    """Run `moto_server` on a free loopback port; yields its endpoint URL, stops it on exit."""
    binary = Path(sys.executable).parent / "moto_server"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="moto-") as tmp:
        log = Path(tmp) / "moto.log"
        with log.open("wb") as out:
            command = [str(binary), "-H", "127.0.0.1", "-p", str(port)]
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_until_up(process, url, log)
            yield url
        finally:
            _stop(process)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
