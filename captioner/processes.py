"""Running the service's parts from Python: the API on a thread, workers as child processes.

`captioner up`, `captioner demo`, the benchmarks and the integration tests all start the
pipeline the same way, through these helpers.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from core.settings import Settings, to_env

READY_MARK = " ready."  # what Celery logs once a worker consumes (after the model loaded)


@contextmanager
def api_server(
    settings: Settings, host: str = "127.0.0.1", port: int = 0, access_log: bool = False
) -> Iterator[str]:
    """Serve the API on a background thread for the block; yields its base URL."""
    from werkzeug.serving import make_server

    from api import create_app

    # Werkzeug logs every request at INFO; keep that for `captioner up`, not for the demo.
    logging.getLogger("werkzeug").setLevel(logging.INFO if access_log else logging.WARNING)
    app = create_app(settings)
    server = make_server(host, port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="api", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.port}"
    finally:
        server.shutdown()
        thread.join()
        app.extensions["captioner"].db.dispose()


def worker_command(
    queues: str = "inference", name: str | None = None, gpus: str = "none", verbose: bool = False
) -> list[str]:
    """The command line of a worker (`gpus="all"`: one process per visible GPU; `verbose`: with
    the libraries' log lines)."""
    command = [sys.executable, "-m", "captioner", "worker", "--queue", queues, "--gpus", gpus]
    return command + (["--name", name] if name else []) + (["--verbose"] if verbose else [])


def beat_command(verbose: bool = False) -> list[str]:
    """The command line of `captioner beat`."""
    return [sys.executable, "-m", "captioner", "beat"] + (["--verbose"] if verbose else [])


def start_worker(
    settings: Settings, log: Path, name: str, queues: str = "inference", gpus: str = "none"
) -> subprocess.Popen:
    """Start a worker process for `settings`, its output going to `log`."""
    return start_process(settings, worker_command(queues, name, gpus), log)


def start_beat(settings: Settings, log: Path) -> subprocess.Popen:
    """Start `captioner beat` (the sweepers' schedule) for `settings`, its output going to `log`."""
    return start_process(settings, beat_command(), log)


def start_process(settings: Settings, command: list[str], log: Path) -> subprocess.Popen:
    """Start `command` with `settings` in its environment, its output going to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    environ = os.environ | to_env(settings) | {"TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log, "ab") as out:
        return subprocess.Popen(command, env=environ, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    """Block until the worker logs that it is ready; raise with its log if it dies or hangs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if READY_MARK in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise RuntimeError(f"worker exited with {process.returncode}:\n{tail(log)}")
        time.sleep(0.2)
    raise TimeoutError(f"worker not ready after {timeout:.0f} s:\n{tail(log)}")


def stop(processes: Sequence[subprocess.Popen], timeout: float = 30) -> None:
    """Ask processes to stop (SIGTERM: Celery finishes its current jobs), then kill stragglers."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def background(commands: list[list[str]], **popen) -> Iterator[list[subprocess.Popen]]:
    """Start processes for the duration of the block, then stop them."""
    children = [subprocess.Popen(command, **popen) for command in commands]
    try:
        yield children
    finally:
        stop(children)


def tail(log: Path, lines: int = 40) -> str:
    """The end of a log file."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
