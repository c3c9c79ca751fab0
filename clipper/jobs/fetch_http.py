"""The fetch stage's HTTP client, safe against SSRF: every connection goes to an address it
has checked itself. The host is resolved once per hop with getaddrinfo, the hop is refused if
*any* resolved address is forbidden (`check_address`), and the socket is then opened to exactly
those validated addresses (`_PinnedHTTPConnection`), while the Host header, TLS SNI and
certificate verification still use the host name. Redirects are followed one hop at a time by
the callers (`next_hop`), each re-checked. `Deadline` and `Watchdog` bound a whole fetch and
interrupt a blocked read when it passes or the job is cancelled. Used by `fetch.py` (whole
downloads) and `clipper.sources.origin` (ranged reads).
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

from clipper import __version__
from clipper.addresses import check_address, is_ip_literal
from clipper.errors import Cancelled, ClipperError, PermanentError, TransientError
from clipper.jobs.spec import redact_url
from clipper.media.command import JobControl
from clipper.settings import FetchSettings

WATCHDOG_POLL = 0.2  # seconds; how soon a cancel or the deadline interrupts a blocked read
USER_AGENT = f"clipper/{__version__}"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
AddrInfo = tuple[Any, ...]  # one getaddrinfo entry: (family, type, proto, canonname, sockaddr)


@dataclass(frozen=True)
class HttpTarget:
    """One http(s) hop: where to connect and what to ask for."""

    scheme: str
    host: str  # ASCII (IDNA) host name or IP literal, without brackets
    port: int
    target: str  # request target: path and query, percent-encoded
    authorization: str | None  # "Basic ..." from the URL's userinfo
    url: str  # the URL itself, for joining relative redirects

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host.lower(), self.port


def parse_http_url(url: str) -> HttpTarget:
    """An http(s) URL -> HttpTarget, or PermanentError naming what is wrong (without secrets)."""
    where = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise PermanentError(f"source {where}: invalid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise PermanentError(f"source {where}: scheme {scheme or '(none)'!r} is not http or https")
    if not parts.hostname:
        raise PermanentError(f"source {where}: URL has no host")
    if port == 0:
        raise PermanentError(f"source {where}: port 0")
    if any(ord(ch) < 0x20 or ch == "\x7f" for ch in url):  # spaces (from a Location) get quoted below
        raise PermanentError(f"source {where}: URL contains whitespace or control characters")
    try:
        host = parts.hostname if is_ip_literal(parts.hostname) else parts.hostname.encode("idna").decode("ascii")
    except UnicodeError:
        raise PermanentError(f"source {where}: host name is not valid IDNA") from None
    target = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    if parts.query:
        target += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    authorization = None
    if parts.username is not None or parts.password is not None:
        creds = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(creds.encode("utf-8")).decode("ascii")
    if port is None:
        port = 443 if scheme == "https" else 80
    return HttpTarget(scheme, host, port, target, authorization, url)


def status_error(status: int, where: str) -> ClipperError | None:
    """None for 2xx; otherwise the error a response status means (redirects are followed before)."""
    if 200 <= status < 300:
        return None
    try:
        text = f"source {where}: HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        text = f"source {where}: HTTP {status}"
    if status in (408, 429) or 500 <= status < 600:
        return TransientError(text)
    if 400 <= status < 500:
        return PermanentError(text)
    return PermanentError(text + " (unexpected status)")


def dns_error(exc: socket.gaierror, host: str) -> ClipperError:
    """A failed lookup: a name that does not exist is permanent, anything else may heal."""
    if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
        return PermanentError(f"source host {host!r} does not resolve (no such name)")
    return TransientError(f"source host {host!r}: DNS lookup failed ({exc.strerror or exc})")


class Deadline:
    def __init__(self, settings: FetchSettings, control: JobControl | None, where: str):
        self.seconds = settings.timeout
        self.per_op = settings.connect_timeout
        self.end = time.monotonic() + settings.timeout
        self.control = control
        self.where = where

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def interrupted(self) -> bool:
        return (self.control is not None and self.control.is_cancelled()) or self.remaining() <= 0

    def check(self) -> None:
        """Raise Cancelled or the overall timeout, if either has happened."""
        if self.control is not None and self.control.is_cancelled():
            raise Cancelled(f"fetch of {self.where} cancelled")
        if self.remaining() <= 0:
            raise TransientError(f"source {self.where}: timed out after {self.seconds:g} s (fetch.timeout)")

    def op_timeout(self) -> float:
        """Timeout of one socket operation: fetch.connect_timeout, but never past the deadline."""
        return max(0.01, min(self.per_op, self.remaining()))


class Watchdog:
    """Shuts the current socket down when the job is cancelled or the deadline passes, so that a
    blocked read ends at once instead of after fetch.connect_timeout (or never, for a server that
    trickles its headers a byte at a time)."""

    def __init__(self, deadline: Deadline):
        self._deadline = deadline
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fetch-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self._thread.join()

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock

    def _run(self) -> None:
        while not self._done.wait(WATCHDOG_POLL):
            if self._deadline.interrupted():
                with self._lock:
                    if self._sock is not None:
                        try:  # the plain syscall, also under an SSLSocket (whose shutdown unwraps TLS)
                            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
                        except OSError:
                            pass
                return


def make_tls_context() -> ssl.SSLContext:
    """Certificate and host name verification against the system CAs (tests replace this)."""
    return ssl.create_default_context()


def _connect_pinned(addresses: list[AddrInfo], timeout: float) -> socket.socket:
    """A TCP connection to the first of the validated addresses that answers; never resolves."""
    last: OSError | None = None
    for family, type_, proto, _, sockaddr in addresses:
        sock = socket.socket(family, type_, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or OSError("no address to connect to")


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to an address already validated; the Host header still names the host."""

    def __init__(self, host: str, port: int, addresses: list[AddrInfo], timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._addresses = addresses

    def connect(self) -> None:
        self.sock = _connect_pinned(self._addresses, self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address already validated; SNI and certificate checks use the host name."""

    def __init__(self, host: str, port: int, addresses: list[AddrInfo], timeout: float, context: ssl.SSLContext):
        super().__init__(host, port, timeout=timeout, context=context)
        self._addresses = addresses
        self._tls = context

    def connect(self) -> None:
        sock = _connect_pinned(self._addresses, self.timeout)
        try:
            self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def _resolve(hop: HttpTarget, deadline: Deadline) -> list[AddrInfo]:
    """getaddrinfo in a helper thread, so that a hung resolver cannot outlast the deadline or
    delay a cancel (the thread is abandoned and ends on its own)."""
    result: list[Any] = []

    def lookup() -> None:
        try:
            result.append(socket.getaddrinfo(hop.host, hop.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP))
        except BaseException as exc:  # handed to the caller
            result.append(exc)

    thread = threading.Thread(target=lookup, name="fetch-dns", daemon=True)
    thread.start()
    give_up = time.monotonic() + deadline.op_timeout()
    while thread.is_alive() and time.monotonic() < give_up:
        deadline.check()
        thread.join(min(WATCHDOG_POLL, max(0.0, give_up - time.monotonic())))
    deadline.check()
    if not result:
        raise TransientError(f"source host {hop.host!r}: DNS lookup took more than {deadline.op_timeout():g} s")
    if isinstance(result[0], socket.gaierror):
        raise dns_error(result[0], hop.host)
    if isinstance(result[0], BaseException):
        raise TransientError(f"source host {hop.host!r}: DNS lookup failed ({result[0]})")
    return result[0]


def _validated_addresses(hop: HttpTarget, infos: list[AddrInfo], allow_private: bool) -> list[AddrInfo]:
    usable = []
    for info in infos:
        family, sockaddr = info[0], info[4]
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        try:
            ip = ipaddress.ip_address(sockaddr[0])
        except ValueError:
            raise PermanentError(f"source host {hop.host!r} resolves to {sockaddr[0]!r}, not an IP address") from None
        reason = check_address(ip, allow_private)
        if reason is not None:
            raise PermanentError(f"source host {hop.host!r} resolves to {ip}, which is refused: {reason}")
        usable.append(info)
    if not usable:
        raise PermanentError(f"source host {hop.host!r} has no IPv4 or IPv6 address")
    return usable


def network_error(exc: BaseException, deadline: Deadline, where: str) -> ClipperError:
    """Classify a failure while talking to a source; the deadline and a cancel explain it first."""
    deadline.check()
    if isinstance(exc, ssl.SSLCertVerificationError):
        return PermanentError(f"source {where}: TLS certificate not accepted ({exc.verify_message or exc.reason})")
    if isinstance(exc, (http.client.IncompleteRead, http.client.RemoteDisconnected)):
        return TransientError(f"source {where}: connection closed early ({type(exc).__name__})")
    if isinstance(exc, http.client.HTTPException):
        return PermanentError(f"source {where}: not a valid HTTP response ({type(exc).__name__})")
    if isinstance(exc, ssl.SSLError):
        return TransientError(f"source {where}: TLS error ({exc.reason or type(exc).__name__})")
    if isinstance(exc, TimeoutError):
        return TransientError(f"source {where}: no response for {deadline.per_op:g} s (fetch.connect_timeout)")
    if isinstance(exc, OSError):
        return TransientError(f"source {where}: {exc.strerror or type(exc).__name__}")
    return TransientError(f"source {where}: {type(exc).__name__}")


def _same_origin(a: HttpTarget, b: HttpTarget) -> bool:
    return a.origin == b.origin


def send_request(hop: HttpTarget, settings: FetchSettings, deadline: Deadline, watchdog: Watchdog,
                 tls: ssl.SSLContext | None, headers: tuple[tuple[str, str], ...] = ()
                 ) -> tuple[http.client.HTTPConnection, socket.socket, http.client.HTTPResponse]:
    """One GET to one hop over a connection pinned to the hop's validated addresses (resolved
    now, for this connection); returns the open connection, its socket (watched by `watchdog`)
    and the response, headers read. `headers`: extra request headers (e.g. Range). The caller
    closes the connection; on error it is closed here."""
    where = redact_url(hop.url)
    deadline.check()
    addresses = _validated_addresses(hop, _resolve(hop, deadline), settings.allow_private)
    if hop.scheme == "https":
        conn: http.client.HTTPConnection = _PinnedHTTPSConnection(hop.host, hop.port, addresses,
                                                                  deadline.op_timeout(), tls or make_tls_context())
    else:
        conn = _PinnedHTTPConnection(hop.host, hop.port, addresses, deadline.op_timeout())
    try:
        conn.connect()
        # kept apart from conn.sock, which http.client drops once a response that
        # closes the connection owns the socket
        sock = conn.sock
        watchdog.watch(sock)
        deadline.check()
        conn.putrequest("GET", hop.target, skip_accept_encoding=True)
        conn.putheader("User-Agent", USER_AGENT)
        conn.putheader("Accept-Encoding", "identity")
        conn.putheader("Accept", "*/*")
        if hop.authorization:
            conn.putheader("Authorization", hop.authorization)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        return conn, sock, conn.getresponse()
    except BaseException as exc:
        conn.close()
        if isinstance(exc, ClipperError) or not isinstance(exc, Exception):
            raise
        raise network_error(exc, deadline, where) from None


def next_hop(hop: HttpTarget, location: str | None, where: str, redirects: int, max_redirects: int) -> HttpTarget:
    if not location:
        raise PermanentError(f"source {where}: redirect without a Location header")
    if redirects >= max_redirects:
        raise PermanentError(f"source {where}: more than {max_redirects} redirects (fetch.max_redirects)")
    try:
        next_url = urljoin(hop.url, location.strip())
        scheme = urlsplit(next_url).scheme.lower()
    except ValueError:
        raise PermanentError(f"source {where}: redirect to an invalid URL") from None
    if scheme not in ("http", "https"):
        raise PermanentError(f"source {where}: redirect to a {scheme[:20] or 'scheme-less'}: URL refused "
                             "(only http and https)")
    nxt = parse_http_url(next_url)
    # Credentials go only where they were given: kept for the same origin, dropped elsewhere.
    if nxt.authorization is None and hop.authorization is not None and _same_origin(hop, nxt):
        nxt = HttpTarget(nxt.scheme, nxt.host, nxt.port, nxt.target, hop.authorization, nxt.url)
    return nxt
