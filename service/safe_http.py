"""Outbound HTTP to a URL that a request named (a CDS Hooks ``fhirServer``, an allowlisted ``jku``).

The rules, so that a caller cannot turn the service into a fetch-anything proxy:

- ``https`` only; plain ``http`` only to a host the operator allowlists (``OutboundPolicy.allow_hosts``);
- no user info in the URL; the host must be an IP literal or resolve, and every address must be public
  (no loopback, private, link-local, shared, multicast, reserved or unspecified address, IPv4-mapped and
  6to4/NAT64 forms included) unless the host is allowlisted; the connection goes to the address that
  was checked (no second lookup, so DNS rebinding cannot swap it);
- no redirects (a 3xx is a refusal) and no proxies from the environment;
- one :class:`Budget` (a deadline and a byte cap) shared by every read it is given, enforced by a
  timer that shuts the socket at the deadline, so a server trickling bytes cannot hold a thread.

DNS lookups (``getaddrinfo``) cannot be interrupted; they are not bounded by the deadline.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

Resolver = Callable[[str, int], list[str]]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CHUNK = 65536


class FetchRefused(Exception):
    """The URL may not be fetched, or the fetch failed; the message says why (no response bytes quoted)."""


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (TCP), in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def public_address(text: str) -> bool:
    """True for a globally routable unicast address; False for everything a server must not be sent to."""
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = addr.sixtofour or (ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF) if addr in _NAT64 else None)
        if addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        elif embedded is not None and not public_address(str(embedded)):
            return False
    bad = (
        addr.is_private,
        addr.is_loopback,
        addr.is_link_local,
        addr.is_multicast,
        addr.is_reserved,
        addr.is_unspecified,
    )
    return addr.is_global and not any(bad)


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent


@dataclass(frozen=True)
class OutboundPolicy:
    """Which hosts may be fetched over plain http or at a non-public address (tests, on-premises servers)."""

    allow_hosts: frozenset[str] = frozenset()
    resolver: Resolver = field(default=resolve, compare=False)

    @classmethod
    def allowing(cls, hosts: Iterable[str], resolver: Resolver = resolve) -> OutboundPolicy:
        return cls(frozenset(h.strip().strip("[]").lower() for h in hosts if h.strip()), resolver)

    def allowlisted(self, host: str) -> bool:
        return host.lower() in self.allow_hosts

    def target(self, url: str) -> Target:
        """The parsed URL if its scheme, form and host are acceptable (no network)."""
        if any(c.isspace() or ord(c) < 32 for c in url):
            raise FetchRefused("the URL holds whitespace or control characters")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("https", "http"):
            raise FetchRefused(f"only https URLs are fetched, not {scheme or 'a relative URL'}:")
        if "@" in parts.netloc:
            raise FetchRefused("a URL with user info is not fetched")
        host = (parts.hostname or "").lower()
        if not host:
            raise FetchRefused("the URL has no host")
        if scheme == "http" and not self.allowlisted(host):
            raise FetchRefused("plain http is fetched only from allowlisted hosts")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise FetchRefused("the URL's port is not valid") from None
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return Target(scheme, host, port, path)

    def address(self, target: Target) -> str:
        """The address to connect to, after checking every address the host has (unless allowlisted)."""
        if _literal(target.host):
            addresses = [target.host]
        else:
            try:
                addresses = self.resolver(target.host, target.port)
            except OSError:
                raise FetchRefused("the host does not resolve") from None
        if not addresses:
            raise FetchRefused("the host does not resolve")
        if not self.allowlisted(target.host) and not all(public_address(a) for a in addresses):
            raise FetchRefused("the host is or resolves to a loopback, private, link-local or other non-public address")
        return addresses[0]


class Budget:
    """One deadline and one byte cap, shared by every read of one job (e.g. one CDS Hooks call)."""

    def __init__(self, timeout_s: float, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.deadline = clock() + timeout_s
        self.bytes_left = max_bytes

    def remaining_s(self) -> float:
        left = self.deadline - self._clock()
        if left <= 0:
            raise FetchRefused("the fetch deadline passed")
        return left

    def expired(self) -> bool:
        return self._clock() >= self.deadline

    def sub(self, max_bytes: int) -> Budget:
        """A budget with the same deadline and at most ``max_bytes`` (one photo); ``take`` its use back here."""
        child = Budget(0, 0, self._clock)
        child.deadline, child.bytes_left = self.deadline, min(self.bytes_left, max_bytes)
        return child

    def take(self, n: int) -> None:
        self.bytes_left -= n
        if self.bytes_left < 0:
            raise FetchRefused("the responses exceed the byte cap")


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, target: Target, ip: str, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, target: Target, ip: str, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=ssl.create_default_context())
        self._ip = ip

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def _abort(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@dataclass(frozen=True)
class Fetched:
    body: bytes
    content_type: str  # the media type, lower-case, without parameters ("" when the server sent none)


def _read_body(conn: http.client.HTTPConnection, response: http.client.HTTPResponse, budget: Budget) -> bytes:
    if 300 <= response.status < 400:
        raise FetchRefused(f"the server answered a redirect ({response.status}); redirects are not followed")
    if response.status != 200:
        raise FetchRefused(f"the server answered HTTP {response.status}")
    if (response.getheader("Content-Encoding") or "identity").lower() != "identity":
        raise FetchRefused("the response is encoded (Content-Encoding); only identity is read")
    length = response.getheader("Content-Length")
    if length is not None and length.isdigit() and int(length) > budget.bytes_left:
        raise FetchRefused("the responses exceed the byte cap")
    chunks = []
    while True:
        if conn.sock is not None:
            conn.sock.settimeout(budget.remaining_s())
        chunk = response.read1(min(_CHUNK, max(budget.bytes_left, 0) + 1))
        if not chunk:
            budget.remaining_s()  # an end forced by the deadline timer is the deadline, not the end
            if response.length:
                raise FetchRefused("the response ended before its Content-Length")
            return b"".join(chunks)
        budget.take(len(chunk))
        chunks.append(chunk)
        budget.remaining_s()


def get(url: str, policy: OutboundPolicy, budget: Budget, headers: dict[str, str] | None = None) -> bytes:
    """GET ``url`` under ``policy`` within ``budget``: the body of a 200, else :class:`FetchRefused`."""
    return fetch(url, policy, budget, headers).body


def fetch(url: str, policy: OutboundPolicy, budget: Budget, headers: dict[str, str] | None = None) -> Fetched:
    """:func:`get` with the response's media type (photos by reference: an image or a FHIR resource)."""
    target = policy.target(url)
    ip = policy.address(target)
    timeout = budget.remaining_s()
    conn_type = _PinnedHTTPS if target.scheme == "https" else _PinnedHTTP
    conn = conn_type(target, ip, timeout)
    timer = threading.Timer(timeout, _abort, (conn,))
    timer.daemon = True
    timer.start()
    try:
        conn.request("GET", target.path, headers={"Accept-Encoding": "identity", **(headers or {})})
        response = conn.getresponse()
        body = _read_body(conn, response, budget)
        media = (response.getheader("Content-Type") or "").split(";", 1)[0].strip().lower()
        return Fetched(body, media)
    except FetchRefused:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if budget.expired() or isinstance(exc, TimeoutError):
            raise FetchRefused("the fetch deadline passed") from None
        raise FetchRefused(f"the fetch failed ({type(exc).__name__})") from None
    finally:
        timer.cancel()
        conn.close()
