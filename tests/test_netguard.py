"""The SSRF guard: its decisions (through a resolver seam, never a connection), and fetches and
webhook posts against loopback servers only. 127.0.0.1 is allowed; 127.0.0.2 stands for a
private address, with a listener there that must never see a connection."""

from __future__ import annotations

import io
import select
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from core.errors import UrlError
from core.netguard import Guard, fetch, host_address, parse_allow, refusal
from core.settings import Settings
from tests.helpers import BLOCKED
from worker.urlimages import fetch_image
from worker.webhooks import post

LOOPBACK = "127.0.0.1/32"


def no_dns(host: str, port: int) -> list[str]:
    """A resolver for URLs that must be decided without one."""
    raise AssertionError(f"{host} should not have been looked up")


def answers(*addresses: str):
    """A resolver that answers `addresses` for any name, and counts its calls."""

    def resolve(host: str, port: int) -> list[str]:
        resolve.calls.append(host)
        return list(addresses)

    resolve.calls = []
    return resolve


@pytest.mark.parametrize(("url", "why"), BLOCKED)
def test_every_blocked_spelling_is_refused_without_a_lookup(url, why):
    with pytest.raises(UrlError, match=why) as refused:
        Guard(resolver=no_dns).check(url)
    assert refused.value.code == "url_forbidden"


@pytest.mark.parametrize(
    ("spelling", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("::ffff:7f00:1", "::ffff:7f00:1"),
        ("example.com", None),
    ],
)
def test_numeric_host_spellings_are_normalised_as_inet_aton_reads_them(spelling, address):
    found = host_address(spelling)
    assert (str(found) if found else None) == address


def test_a_numeric_host_inet_aton_rejects_is_refused_not_looked_up():
    with pytest.raises(UrlError, match="not a valid IPv4 address"):
        Guard(resolver=no_dns).check("http://0x1.0x2.0x3.0x4.5/")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a.png",
        "file:///etc/passwd",
        "gopher://h/",
        "http:///nohost",
        "http://user:pw@example.com/",
        "http://exa mple.com/",
        "http://example.com:99999/",
    ],
)
def test_only_plain_http_and_https_urls_are_taken(url):
    with pytest.raises(UrlError) as refused:
        Guard(resolver=no_dns).check(url)
    assert refused.value.code == "url_invalid"


def test_every_address_a_name_resolves_to_must_be_public():
    resolve = answers("93.184.216.34", "10.0.0.1")
    with pytest.raises(UrlError, match="private") as refused:
        Guard(resolver=resolve).check("https://mixed.example/x")
    assert refused.value.code == "url_forbidden" and resolve.calls == ["mixed.example"]
    target = Guard(resolver=answers("93.184.216.34", "2606:2800:220:1::1")).check(
        "https://public.example:8443/a?b=1"
    )
    assert (target.host, target.port, target.address, target.path) == (
        "public.example",
        8443,
        "93.184.216.34",
        "/a?b=1",
    )


def test_a_name_that_does_not_resolve_is_unreachable():
    def fails(host: str, port: int) -> list[str]:
        raise socket.gaierror("Name or service not known")

    with pytest.raises(UrlError) as failed:
        Guard(resolver=fails).check("http://nowhere.test/")
    assert failed.value.code == "url_unreachable"


def test_the_allow_list_takes_cidrs_and_host_names_and_nothing_else():
    guard = Guard.from_allow("10.0.0.0/8, cache.internal", answers("192.168.0.9"))
    assert guard.check("http://10.2.3.4/").address == "10.2.3.4"
    assert guard.check("http://CACHE.internal/").address == "192.168.0.9"
    with pytest.raises(UrlError, match="private"):
        guard.check("http://other.internal/")
    with pytest.raises(ValueError, match="neither"):
        parse_allow("10.0.0.0/33")
    assert refusal(host_address("8.8.8.8")) is None


# Loopback servers ------------------------------------------------------------------------------


def png(size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


class Script(BaseHTTPRequestHandler):
    """Answers by path; records each request's path and Host header on the server."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.seen.append((self.path, self.headers["Host"]))
        self.server.routes[self.path](self)

    do_POST = do_GET  # noqa: N815

    def send(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def trap() -> Iterator[tuple[str, socket.socket]]:
    """A listener on 127.0.0.2 (outside the allow-list); it must never see a connection."""
    with socket.create_server(("127.0.0.2", 0)) as listener:
        yield f"http://127.0.0.2:{listener.getsockname()[1]}", listener


def untouched(listener: socket.socket) -> bool:
    """True when nobody connected to the listener."""
    return select.select([listener], [], [], 0.2)[0] == []


@pytest.fixture
def server(trap) -> Iterator[ThreadingHTTPServer]:
    """A scripted HTTP server on 127.0.0.1."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Script)
    base = f"http://127.0.0.1:{server.server_port}"
    server.seen, server.base = [], base
    server.routes = {
        "/ok": lambda h: h.send(200, png(), Content_Type="text/plain"),  # sniffed, not trusted
        "/hop": lambda h: h.send(302, Location="/ok"),
        "/away": lambda h: h.send(302, Location=f"{trap[0]}/secret"),
        "/loop": lambda h: h.send(302, Location="/loop"),
        "/big": lambda h: h.send(200, b"x" * 5000),
        "/endless": lambda h: (h.send_response(200), h.end_headers(), h.wfile.write(b"x" * 10**5)),
        "/slow": lambda h: (time.sleep(1.5), h.send(200, png())),
        "/text": lambda h: h.send(200, b"<html>not an image</html>", Content_Type="image/png"),
        "/missing": lambda h: h.send(404, b"no"),
        "/short": lambda h: (
            h.send_response(200),
            h.send_header("Content-Length", str(len(png()) + 1000)),
            h.end_headers(),
            h.wfile.write(png()),  # then the connection closes, 1000 bytes short
        ),
    }
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def settings(**changes) -> Settings:
    return Settings(
        Path("."), "sqlite://", "filesystem://", None, url_allow=LOOPBACK, url_fetch_timeout_s=5.0
    ).with_overrides(**changes)


def test_an_image_is_fetched_and_sniffed_through_an_allowed_redirect(server):
    data, info = fetch_image(f"{server.base}/hop", Guard.from_allow(LOOPBACK), settings())
    assert data == png() and info.format == "PNG"
    assert [path for path, _ in server.seen] == ["/hop", "/ok"]


def test_a_redirect_to_an_address_outside_the_allow_list_is_refused_unconnected(server, trap):
    with pytest.raises(UrlError, match="127.0.0.2") as refused:
        fetch_image(f"{server.base}/away", Guard.from_allow(LOOPBACK), settings())
    assert refused.value.code == "url_forbidden"
    assert untouched(trap[1])


@pytest.mark.parametrize(
    ("path", "code", "changes"),
    [
        ("/big", "url_too_large", {"max_image_bytes": 1000}),
        ("/endless", "url_too_large", {"max_image_bytes": 1000}),
        ("/slow", "url_timeout", {"url_fetch_timeout_s": 0.5}),
        ("/loop", "url_redirects", {}),
        ("/missing", "url_unreachable", {}),
        ("/short", "url_unreachable", {}),
        ("/text", "not_an_image", {}),
    ],
)
def test_fetch_failures_have_their_codes(server, path, code, changes):
    started = time.monotonic()
    with pytest.raises((UrlError, ValueError)) as failed:
        fetch_image(server.base + path, Guard.from_allow(LOOPBACK), settings(**changes))
    assert failed.value.code == code
    assert time.monotonic() - started < 3


def test_a_closed_port_is_unreachable(trap):
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    with pytest.raises(UrlError) as failed:
        fetch(f"http://127.0.0.1:{port}/", Guard.from_allow(LOOPBACK), 1000, 2)
    assert failed.value.code == "url_unreachable"


def test_the_connection_goes_to_the_checked_address_not_a_second_answer(server, trap):
    """DNS rebinding: the name resolves to the allowed address when checked, to another one
    later; the guard looks it up once per hop and connects to what it checked."""
    later = [f"127.0.0.{2}"]  # what a second lookup would answer: the trap

    def rebinding(host: str, port: int) -> list[str]:
        rebinding.calls += 1
        return ["127.0.0.1"] if rebinding.calls == 1 else later

    rebinding.calls = 0
    data = fetch(
        f"http://rebind.test:{server.server_port}/ok",
        Guard.from_allow(LOOPBACK, rebinding),
        100_000,
        5,
    )
    assert data == png() and rebinding.calls == 1
    assert server.seen == [("/ok", f"rebind.test:{server.server_port}")]  # the name, as Host
    with pytest.raises(UrlError, match="127.0.0.2"):  # the second answer is checked, and refused
        fetch(
            f"http://rebind.test:{server.server_port}/ok",
            Guard.from_allow(LOOPBACK, rebinding),
            100_000,
            5,
        )
    assert untouched(trap[1])


def test_a_webhook_to_a_refused_address_is_a_failed_attempt_never_a_connection(trap):
    record, retry_after = post(f"{trap[0]}/hook", {}, b"{}", 5, Guard.from_allow(LOOPBACK))
    assert record.status_code is None and "url_forbidden" in record.error
    assert retry_after is None and untouched(trap[1])
