"""Fetch an image from a user-supplied URL without letting the URL reach inside our network.

Only http(s). The host is resolved once and *every* address it resolves to must be public
(private, loopback, link-local, reserved, multicast and unspecified ranges are refused, IPv4
embedded in IPv6 included); the connection then goes to the vetted address itself, so a second
DNS answer cannot swap in an internal one (no time-of-check/time-of-use gap). Redirects are
followed by hand, each target vetted the same way, at most MAX_REDIRECTS. Short timeouts, an
overall deadline over the whole exchange (connect, TLS, status line, headers, 1xx answers, body:
see `_Deadline`), a streamed byte cap, and the content type and magic bytes are checked before
anything is decoded.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable
from urllib.parse import urljoin, urlsplit

from clipsearch.errors import ImageError, ImageTooLarge, InvalidInput

MAX_REDIRECTS = 3
CONNECT_TIMEOUT_S = 3.0
TOTAL_TIMEOUT_S = 8.0
CHUNK = 64 * 1024
USER_AGENT = "clipsearch/1.0 (+image search query fetch)"
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # IPv4 reached through a NAT64 gateway


class UrlRefused(InvalidInput):
    """The URL points somewhere we never fetch from (scheme, credentials, a private address)."""

    code = "url_refused"


class UrlFetchFailed(InvalidInput):
    """The URL is acceptable but did not give us an image (unreachable, 404, too slow, not an image)."""

    code = "url_fetch_failed"


def is_public_address(ip: IpAddress) -> bool:
    """True only for globally routable unicast addresses (IPv4 inside IPv6 judged as IPv4)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d
            return is_public_address(ip.ipv4_mapped)
        embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not is_public_address(embedded):
            return False
    return ip.is_global and not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                                 or ip.is_reserved or ip.is_unspecified)


_DNS_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dns")


def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses, in the system resolver's order, with the overall DNS time bounded."""
    def lookup() -> list[str]:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    try:
        return _DNS_POOL.submit(lookup).result(timeout=CONNECT_TIMEOUT_S)
    except FutureTimeout:
        raise UrlFetchFailed(f"resolving {host!r} took longer than {CONNECT_TIMEOUT_S:.0f} s") from None
    except (OSError, UnicodeError) as exc:
        raise UrlFetchFailed(f"cannot resolve host {host!r} ({exc})") from None


def sniff_image(data: bytes) -> str | None:
    """The image format the magic bytes announce, or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


class _Deadline:
    """One fetch's overall deadline, enforced on whatever socket call is blocked when it passes.

    A socket timeout bounds each recv, not their sum: a server that sends its status line or its
    headers a byte at a time, or `100 Continue` answers without end, keeps http.client reading
    for as long as it likes (a status line at 1 byte/s held the function for its whole 28 s
    timeout). At the deadline a timer shuts the connection's socket down, which ends the blocked
    call at once, whichever it is.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.expired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def attach(self, sock: socket.socket | None) -> None:
        """Watch `sock` (None: stop watching, before the socket is closed)."""
        with self._lock:
            self._sock = sock
            if sock is not None and self.expired:
                _shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()
        self.attach(None)

    def failure(self) -> "UrlFetchFailed":
        return UrlFetchFailed(f"the URL did not deliver an image within {self.seconds:g} s: "
                              "the server answers too slowly or not at all")

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._sock is not None:
                _shut(self._sock)


def _shut(sock: socket.socket) -> None:
    # The plain socket's shutdown, also for a TLS socket: it wakes a blocked recv or handshake at
    # once, and leaves the TLS object alone for the thread that is using it.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed or never connected


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to the vetted address; Host header and everything else still name the host."""

    def __init__(self, host: str, port: int, ip: str, timeout: float, deadline: _Deadline):
        super().__init__(host, port, timeout=timeout)
        self._ip, self._deadline = ip, deadline

    def _open(self) -> socket.socket:
        remaining = self._deadline.remaining()
        if remaining <= 0:
            raise self._deadline.failure()
        sock = socket.create_connection((self._ip, self.port), min(self.timeout, remaining))
        self._deadline.attach(sock)
        return sock

    def connect(self) -> None:
        self.sock = self._open()


class _PinnedHTTPS(_PinnedHTTP, http.client.HTTPSConnection):
    """TLS to the vetted address, the certificate checked against the URL's host name."""

    def __init__(self, host: str, port: int, ip: str, timeout: float, deadline: _Deadline):
        http.client.HTTPSConnection.__init__(self, host, port, timeout=timeout, context=ssl.create_default_context())
        self._ip, self._deadline = ip, deadline

    def connect(self) -> None:
        # The handshake runs after the TLS socket is watched: a server trickling its certificate
        # is cut off at the deadline too.
        tls = self._context.wrap_socket(self._open(), server_hostname=self.host, do_handshake_on_connect=False)
        self._deadline.attach(tls)
        tls.do_handshake()
        self.sock = tls


class SafeFetcher:
    """`fetch(url) -> bytes` of an image, or a typed error saying why not.

    `resolver` and `is_allowed` exist for tests only: the tests serve images from 127.0.0.1,
    which the default policy rightly refuses, so they pass a policy admitting exactly that
    address to exercise the success path. Production uses the defaults.
    """

    def __init__(
        self,
        *,
        max_bytes: int,
        resolver: Resolver = system_resolver,
        is_allowed: Callable[[IpAddress], bool] = is_public_address,
        timeout_s: float = CONNECT_TIMEOUT_S,
        total_timeout_s: float = TOTAL_TIMEOUT_S,
        max_redirects: int = MAX_REDIRECTS,
    ):
        self.max_bytes, self.resolver, self.is_allowed = max_bytes, resolver, is_allowed
        self.timeout_s, self.total_timeout_s, self.max_redirects = timeout_s, total_timeout_s, max_redirects

    def fetch(self, url: str) -> bytes:
        deadline = _Deadline(self.total_timeout_s)
        try:
            return self._follow(url, deadline)
        finally:
            deadline.cancel()

    def _follow(self, url: str, deadline: _Deadline) -> bytes:
        for _ in range(self.max_redirects + 1):
            host, port, ip, target, tls = self._vet(url)
            conn = (_PinnedHTTPS if tls else _PinnedHTTP)(host, port, ip, self.timeout_s, deadline)
            try:
                location = self._get(conn, target, url, deadline)
                if isinstance(location, bytes):
                    return location
                url = location
            except (OSError, http.client.HTTPException) as exc:
                # A socket timeout clamped to the time left ends in step with the deadline's timer.
                if deadline.expired or deadline.remaining() < 0.05:
                    raise deadline.failure() from None
                raise UrlFetchFailed(f"fetching the URL failed ({type(exc).__name__}: {exc})") from None
            finally:
                deadline.attach(None)  # before the close: the timer never touches a closed socket
                conn.close()
        raise UrlFetchFailed(f"the URL redirected more than {self.max_redirects} times")

    def _vet(self, url: str) -> tuple[str, int, str, str, bool]:
        """Parse and resolve `url`; refuse it unless every address is allowed."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise UrlRefused(f"not a valid URL ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise UrlRefused(f"only http and https URLs are fetched, not {scheme or 'a relative URL'!r}")
        if parts.username is not None or parts.password is not None:
            raise UrlRefused("URLs with credentials (user:password@) are not fetched")
        host = parts.hostname
        if not host:
            raise UrlRefused("the URL has no host name")
        port = port or (443 if scheme == "https" else 80)
        addresses = self.resolver(host, port)
        if not addresses:
            raise UrlFetchFailed(f"host {host!r} has no address")
        for addr in addresses:
            ip = ipaddress.ip_address(addr.split("%")[0])
            if not self.is_allowed(ip):
                raise UrlRefused(f"host {host!r} resolves to {ip}, a private or reserved address: "
                                 "only public image URLs are fetched")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return host, port, addresses[0], target, scheme == "https"

    def _get(self, conn: http.client.HTTPConnection, target: str, url: str, deadline: _Deadline) -> bytes | str:
        """The image bytes, or the next URL when the answer is a redirect."""
        try:
            conn.request("GET", target, headers={"User-Agent": USER_AGENT, "Accept": "image/*",
                                                  "Accept-Encoding": "identity"})
        except (ValueError, http.client.InvalidURL) as exc:  # control or non-ASCII characters
            raise UrlRefused(f"the URL cannot be requested ({exc})") from None
        resp = conn.getresponse()
        if deadline.expired:  # status line and headers cut short by the deadline, not ended by the server
            raise deadline.failure()
        if resp.status in (301, 302, 303, 307, 308):
            location = resp.getheader("Location")
            if not location:
                raise UrlFetchFailed(f"the URL answered HTTP {resp.status} without a Location")
            return urljoin(url, location)
        if resp.status != 200:
            raise UrlFetchFailed(f"the URL answered HTTP {resp.status}, not an image")
        ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
        if not (ctype.startswith("image/") or ctype == "application/octet-stream"):
            raise UrlFetchFailed(f"the URL serves {ctype or 'no content type'}, not an image")
        length = resp.getheader("Content-Length")
        if length and length.isdigit() and int(length) > self.max_bytes:
            raise ImageTooLarge("bytes", int(length), self.max_bytes)
        data = self._read_capped(resp, deadline)
        if sniff_image(data) is None:
            raise ImageError("the URL's content is not a JPEG, PNG, WebP or GIF image")
        return data

    def _read_capped(self, resp: http.client.HTTPResponse, deadline: _Deadline) -> bytes:
        chunks, total = [], 0
        while True:
            if deadline.remaining() <= 0:
                raise deadline.failure()
            chunk = resp.read1(CHUNK)  # what has arrived: a slow drip still meets the deadline
            if not chunk:
                if deadline.expired:  # the end of the body was the deadline's shutdown, not the server's
                    raise deadline.failure()
                return b"".join(chunks)
            total += len(chunk)
            if total > self.max_bytes:
                raise ImageTooLarge("bytes", total, self.max_bytes)
            chunks.append(chunk)
