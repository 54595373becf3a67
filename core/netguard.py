"""The SSRF guard: which URLs the service may fetch or post to, and a connection pinned to the
address that was checked.

`Guard.check(url)` parses the URL (http and https only), normalises numeric host spellings
(`2130706433`, `0177.0.0.1`, `0x7f.1` mean 127.0.0.1, as `inet_aton` reads them), resolves the
name once through the guard's resolver and refuses it unless every address is public (or on the
allow-list). `Guard.request` then connects to that very address, never looking the name up
again (so a DNS answer that changes in between, "DNS rebinding", is never followed); for https
it still sends the name as SNI and Host and verifies the certificate for the name. `fetch` does
both for each hop of up to MAX_REDIRECTS redirects, capping the bytes and the total time.

The standard library does the work: `advocate`, the known guard library, is unmaintained and
built on requests, and the rules fit in this module.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from core.errors import UrlError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]  # (host, port) → IP address strings
MAX_REDIRECTS = 3
CHUNK = 64 * 1024
REDIRECTS = (301, 302, 303, 307, 308)
# A host whose last label is a number is an IPv4 address (as URL parsers read it), to be
# spelt as inet_aton accepts: one to four parts, each decimal, octal (0…) or hex (0x…).
_NUMERIC = re.compile(r"(.*\.)?(0x[0-9a-f]*|\d+)\.?", re.IGNORECASE)
# Ranges that carry (or translate to) an IPv4 address, or are not public; checked by name first.
_BLOCKED: tuple[tuple[str, str], ...] = (
    ("::ffff:0:0/96", "an IPv4-mapped IPv6 address"),
    ("::ffff:0:0:0/96", "an IPv4-translated IPv6 address"),
    ("64:ff9b::/96", "a NAT64 (IPv4-translated) address"),
    ("64:ff9b:1::/48", "a NAT64 (IPv4-translated) address"),
    ("2002::/16", "a 6to4 address (it embeds an IPv4 address)"),
    ("2001::/32", "a Teredo address (it embeds an IPv4 address)"),
    ("100.64.0.0/10", "a carrier-grade NAT address"),
    ("fc00::/7", "a unique-local (private) address"),
)
_KINDS = (("is_unspecified", "an unspecified address"), ("is_loopback", "a loopback address"),
          ("is_link_local", "a link-local address"), ("is_multicast", "a multicast address"),
          ("is_reserved", "a reserved address"), ("is_private", "a private address"))  # fmt: skip
_BLOCKED_NETS = tuple((ipaddress.ip_network(net), why) for net, why in _BLOCKED)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (socket.getaddrinfo), in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def parse_allow(text: str) -> tuple[tuple[Network, ...], frozenset[str]]:
    """'10.0.0.0/8, cache.internal' as (networks, host names); ValueError names a bad entry."""
    networks, hosts = [], set()
    for entry in filter(None, (part.strip() for part in text.split(","))):
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            if not re.fullmatch(r"[a-z0-9.-]+", entry, re.IGNORECASE) or _NUMERIC.fullmatch(entry):
                raise ValueError(f"{entry!r} is neither a CIDR nor a host name") from None
            hosts.add(entry.lower().rstrip("."))
    return tuple(networks), frozenset(hosts)


def host_address(host: str) -> Address | None:
    """The address a host spelling denotes (numeric IPv4 forms normalised), None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host.rstrip(".")))
        except OSError:
            raise UrlError("url_forbidden", f"{host!r} is not a valid IPv4 address") from None
    return None


def refusal(address: Address) -> str | None:
    """Why `address` is not public, or None when it is."""
    for network, why in _BLOCKED_NETS:
        if address.version == network.version and address in network:
            return why
    for attribute, why in _KINDS:
        if getattr(address, attribute):
            return why
    return None if address.is_global else "not a public address"


@dataclass(frozen=True)
class Target:
    """A checked URL: the name to send as Host and SNI, and the address to connect to."""

    scheme: str
    host: str
    port: int
    address: str
    path: str  # path and query, as sent in the request line


@dataclass(frozen=True)
class Guard:
    """The rules (an allow-list of networks and host names) and the resolver they use."""

    networks: tuple[Network, ...] = ()
    hosts: frozenset[str] = frozenset()
    resolver: Resolver = field(default=system_resolver, compare=False)

    @classmethod
    def from_allow(cls, allow: str, resolver: Resolver = system_resolver) -> Guard:
        """A guard that also allows `allow` (comma-separated CIDRs and host names)."""
        networks, hosts = parse_allow(allow)
        return cls(networks, hosts, resolver)

    def check(self, url: str) -> Target:
        """The URL's target if every address it resolves to may be contacted, else UrlError."""
        parts = _split(url)
        host = parts.hostname.rstrip(".")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        literal = host_address(host)
        if literal is None and (host == "localhost" or host.endswith(".localhost")):
            raise UrlError("url_forbidden", f"{host!r} is a loopback name")
        addresses = [literal] if literal is not None else self._resolve(host, port)
        for address in addresses:
            why = None if self._allowed(host, address) else refusal(address)
            if why:
                raise UrlError("url_forbidden", f"{host!r} is {why} ({address})")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return Target(parts.scheme, host, port, str(addresses[0]), path)

    def _resolve(self, host: str, port: int) -> list[Address]:
        try:
            found = [ipaddress.ip_address(a.split("%")[0]) for a in self.resolver(host, port)]
        except (OSError, UnicodeError, ValueError) as exc:
            raise UrlError("url_unreachable", f"{host!r} does not resolve: {exc}") from None
        if not found:
            raise UrlError("url_unreachable", f"{host!r} does not resolve")
        return found

    def _allowed(self, host: str, address: Address) -> bool:
        return host.lower() in self.hosts or any(
            address.version == net.version and address in net for net in self.networks
        )

    def request(
        self,
        target: Target,
        method: str,
        headers: dict[str, str],
        body: bytes | None,
        timeout: float,
    ) -> tuple[http.client.HTTPResponse, socket.socket]:
        """Send a request to the checked address: the response (the caller reads and closes it)
        and its socket (to shorten its timeout as a deadline nears)."""
        kind = _PinnedHTTPS if target.scheme == "https" else _PinnedHTTP
        connection = kind(target, timeout)
        connection.request(method, target.path, body=body, headers=headers)
        sock = connection.sock  # getresponse may hand the socket over to the response
        return connection.getresponse(), sock


def _split(url: str):
    if not isinstance(url, str) or any(c.isspace() or ord(c) < 32 for c in url):
        raise UrlError("url_invalid", "the URL must be text without spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise UrlError("url_invalid", f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UrlError("url_invalid", "the URL must be http:// or https:// with a host")
    if parts.username is not None or parts.password is not None:
        raise UrlError("url_invalid", "the URL must not carry a user name or password")
    return parts


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP to the checked address, with the name in the Host header."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self.address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """TLS to the checked address; SNI and the certificate check use the name."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(
            target.host, target.port, timeout=timeout, context=ssl.create_default_context()
        )
        self.address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def fetch(
    url: str, guard: Guard, max_bytes: int, timeout_s: float, max_redirects: int = MAX_REDIRECTS
) -> bytes:
    """GET `url`'s body, following up to `max_redirects` redirects (each one checked again);
    UrlError with url_forbidden, url_unreachable, url_timeout, url_too_large or url_redirects."""
    deadline = time.monotonic() + timeout_s
    for _ in range(max_redirects + 1):
        target = guard.check(url)
        try:
            status, location, body = _get(guard, target, deadline, max_bytes)
        except TimeoutError:
            raise UrlError("url_timeout", f"no complete answer within {timeout_s:g} s") from None
        except UrlError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise UrlError("url_unreachable", f"{type(exc).__name__}: {exc}") from None
        if status in REDIRECTS and location:
            url = urljoin(url, location)
            continue
        if status != 200:
            raise UrlError("url_unreachable", f"the server answered HTTP {status}")
        return body
    raise UrlError("url_redirects", f"more than {max_redirects} redirects")


def _get(guard: Guard, target: Target, deadline: float, max_bytes: int):
    """(status, Location, body) of one GET, within the deadline and the byte cap."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    headers = {"User-Agent": "captioner-fetch/1", "Accept": "image/*"}
    response, sock = guard.request(target, "GET", headers, None, left)
    try:
        if response.status in REDIRECTS:
            return response.status, response.getheader("Location"), b""
        length = response.getheader("Content-Length", "")
        if length.isdigit() and int(length) > max_bytes:
            raise UrlError("url_too_large", f"{length} bytes; at most {max_bytes} are fetched")
        chunks, size = [], 0
        while chunk := _read(response, sock, deadline):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise UrlError("url_too_large", f"over {max_bytes} bytes; the fetch stopped")
        if length.isdigit() and size < int(length):  # the server closed early
            raise UrlError("url_unreachable", f"the answer ended after {size} of {length} bytes")
        return response.status, None, b"".join(chunks)
    finally:
        response.close()


def _read(response: http.client.HTTPResponse, sock: socket.socket, deadline: float) -> bytes:
    """The next chunk, each wait bounded by what is left of the deadline."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    sock.settimeout(left)
    return response.read1(CHUNK)
