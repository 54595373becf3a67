"""Request body limits per route, against the API as production runs it (the Dockerfile's
gunicorn command, with one worker process) spoken to in raw HTTP: a declared Content-Length over
the route's limit is refused before the body is sent, a chunked body is cut off at the limit,
and the API's memory stays flat while it does."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from harness.stack import production_api
from tests.helpers import b64, png

MiB = 1 << 20
IMAGE_BYTES = 10 * MiB  # the default MAX_IMAGE_BYTES: a job's body may be ~14 MB
CHUNKED_BYTES = 200 * MiB
PEAK_ALLOWANCE = 100 * MiB  # the goal: under 100 MiB above idle


@pytest.fixture(scope="module")
def server(settings, tmp_path_factory):
    """(port, worker pid) of the production gunicorn command with one worker, on the stack."""
    log = tmp_path_factory.mktemp("body-limits") / "api.log"
    limits = settings.with_overrides(max_image_bytes=IMAGE_BYTES)
    with production_api(limits, log, workers=1) as api:
        yield int(api.url.rsplit(":", 1)[1]), worker_pid(api.process.pid)


def worker_pid(master: int) -> int:
    """The pid of gunicorn's one worker process."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def memory(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak since start) of a process, in bytes."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in lines)
    return {name: int(fields[name].split()[0]) * 1024 for name in ("VmRSS", "VmHWM")}


def exchange(port: int, head: str, body: Iterable[bytes] = ()) -> tuple[int, dict, float]:
    """Send a request head, then `body`'s pieces until the server stops reading; the status,
    the JSON answer and the seconds until the answer came."""
    answer, started = bytearray(), time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        reader = threading.Thread(target=read_all, args=(sock, answer))
        reader.start()
        try:
            sock.sendall(head.encode("latin-1"))
            for piece in body:
                sock.sendall(piece)
        except OSError:
            pass  # the server answered and closed without reading the rest: as meant
        reader.join(60)
    took = time.monotonic() - started
    status_line, _, rest = bytes(answer).partition(b"\r\n")
    payload = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(payload or b"null"), took


def read_all(sock: socket.socket, into: bytearray) -> None:
    """Everything the server sends until it closes (it answers once, then closes)."""
    try:
        while data := sock.recv(65536):
            into.extend(data)
    except OSError:
        pass


def head(method: str, path: str, api_key: str, **headers: str) -> str:
    """A request head with the key, `headers` (underscores as dashes) and a blank line."""
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Connection: close",
        f"Authorization: Bearer {api_key}",
    ]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return "\r\n".join(lines) + "\r\n\r\n"


JSON_OPENING = ("application/json", b'{"image": "')
MULTIPART_OPENING = (
    "multipart/form-data; boundary=XyZ",
    b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
    b"Content-Type: image/png\r\n\r\n",
)


def chunked(total: int, opening: bytes, piece: int = MiB) -> Iterator[bytes]:
    """`opening`, then `total` bytes of an image that never ends, in chunked transfer coding."""
    yield b"%x\r\n%s\r\n" % (len(opening), opening)
    for _ in range(total // piece):
        yield b"%x\r\n" % piece + b"A" * piece + b"\r\n"
    yield b"0\r\n\r\n"


def json_post(port: int, path: str, api_key: str, body: dict) -> tuple[int, dict, float]:
    """POST a JSON body with its Content-Length."""
    data = json.dumps(body).encode()
    return exchange(
        port,
        head("POST", path, api_key, Content_Type="application/json", Content_Length=str(len(data))),
        [data],
    )


@pytest.mark.parametrize(
    ("path", "declared"),
    [
        ("/v1/jobs", 15 * MiB),
        ("/v1/batches", 2 * 1024**3),
        ("/v1/datasets", 3 * 1024**3),
        ("/v1/keys", MiB),
    ],
)
def test_a_declared_length_over_the_routes_limit_gets_413_before_the_body(
    server, api_key, path, declared
):
    port, _ = server
    request = head(
        "POST", path, api_key, Content_Type="application/json", Content_Length=str(declared)
    )
    status, body, took = exchange(port, request)  # the body is never sent
    assert status == 413 and body["code"] == "request_entity_too_large"
    assert "bytes" in body["detail"] and took < 2


def test_a_chunked_body_is_cut_off_at_the_limit_and_memory_stays_flat(server, api_key, queue):
    port, pid = server
    assert json_post(port, "/v1/jobs", api_key, {"image": b64(png())})[0] == 202  # warm
    idle = memory(pid)["VmRSS"]
    for extra, (media_type, opening) in [
        ({}, JSON_OPENING),
        ({}, MULTIPART_OPENING),
        ({"Idempotency_Key": "chunked-1"}, JSON_OPENING),
    ]:
        # JSON read whole by the view, a multipart file spooled by the form parser, or any
        # body spooled first by the idempotency hook
        request = head(
            "POST",
            "/v1/jobs",
            api_key,
            Content_Type=media_type,
            Transfer_Encoding="chunked",
            **extra,
        )
        status, body, _ = exchange(port, request, chunked(CHUNKED_BYTES, opening))
        peak = memory(pid)["VmHWM"]
        print(
            f"{media_type} {extra}: {status}; idle RSS {idle / MiB:.1f} MiB, "
            f"peak {peak / MiB:.1f} MiB (+{(peak - idle) / MiB:.1f})"
        )
        assert status == 413 and body["code"] == "request_entity_too_large"
        assert peak - idle < PEAK_ALLOWANCE


def test_a_job_and_a_batch_within_their_limits_are_still_accepted(server, api_key, queue):
    port, _ = server
    status, body, _ = json_post(port, "/v1/jobs", api_key, {"image": b64(png())})
    assert status == 202, body
    status, body, _ = json_post(port, "/v1/batches", api_key, {"images": [b64(png())] * 3})
    assert status == 202 and len(body["jobs"]) == 3, body


def test_a_small_chunked_job_is_accepted(server, api_key, queue):
    port, _ = server
    data = json.dumps({"image": b64(png())}).encode()
    request = head(
        "POST", "/v1/jobs", api_key, Content_Type="application/json", Transfer_Encoding="chunked"
    )
    status, body, _ = exchange(port, request, [b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)])
    assert status == 202, body
