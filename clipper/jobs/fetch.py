"""Fetching a job's source into the job's scratch directory: the only module that knows where
source bytes come from (http, https, s3, and file under `fetch.allow_file_roots`).

Untrusted URLs and SSRF. Every connection this module makes to an http(s) source goes to an
address it has checked itself: the host is resolved once per hop with getaddrinfo, the hop is
refused if *any* resolved address is forbidden (`check_address`), and the socket is then opened
to exactly those validated addresses (`_PinnedHTTPConnection`), while the Host header, TLS SNI
and certificate verification still use the host name. Redirects are followed here, one hop at a
time, each re-checked (scheme and addresses). Handing the URL to wget or ffmpeg instead would
not be safe: they resolve the name again (DNS rebinding) and follow redirects unchecked.
Environment proxy variables are ignored for the same reason: the address check must apply to
the connection that is actually made.

Any port is allowed: the address decides what a URL can reach, and media servers do run on
odd ports. Loopback and private ranges need `fetch.allow_private`; link-local (cloud metadata),
multicast, unspecified and reserved addresses are refused always, also when embedded in an
IPv6 address (IPv4-mapped, 6to4, NAT64, Teredo).

Limits: `fetch.timeout` is a hard deadline for the whole fetch (a watchdog shuts the socket
down when it passes or when the job is cancelled, so a server that trickles bytes cannot hold a
worker), `fetch.connect_timeout` bounds every single socket operation, `fetch.max_bytes` bounds
the body (announced or streamed), `fetch.max_redirects` the hops.

`s3://bucket/key` sources: see `fetch_s3.py`. The address policy itself: `addresses.py`.

`file://` sources are returned in place (no copy; the pipeline only reads them) when their real
path, symlinks resolved, lies under one of `fetch.allow_file_roots`.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import os
import re
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

from clipper import __version__
from clipper.addresses import check_address, is_ip_literal
from clipper.errors import Cancelled, ClipperError, PermanentError, TransientError
from clipper.jobs.fetch_s3 import PROGRESS_EVERY, fetch_s3, parse_s3_url
from clipper.jobs.spec import redact_url
from clipper.media.command import JobControl
from clipper.settings import FetchSettings

CHUNK_BYTES = 1024 * 1024
WATCHDOG_POLL = 0.2  # seconds; how soon a cancel or the deadline interrupts a blocked read
USER_AGENT = f"clipper/{__version__}"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
EXTENSION_RE = re.compile(r"^[a-z0-9]{1,5}$")

@dataclass(frozen=True)
class FetchedSource:
    path: Path  # local file with the whole source
    url: str  # redacted (no credentials, no query) for logs/manifest
    bytes: int
    seconds: float
    content_type: str | None


# -- URLs, names and statuses (pure) ---------------------------------------------------------------

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


def source_filename(url_path: str) -> str:
    """`source` plus the URL path's extension when it is a safe one ([a-z0-9]{1,5}), else `source`."""
    last = url_path.rsplit("/", 1)[-1]
    if "." not in last:
        return "source"
    ext = last.rsplit(".", 1)[1].lower()
    return f"source.{ext}" if EXTENSION_RE.match(ext) else "source"


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


# -- deadline, cancellation, watchdog --------------------------------------------------------------

class _Deadline:
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


class _Watchdog:
    """Shuts the current socket down when the job is cancelled or the deadline passes, so that a
    blocked read ends at once instead of after fetch.connect_timeout (or never, for a server that
    trickles its headers a byte at a time)."""

    def __init__(self, deadline: _Deadline):
        self._deadline = deadline
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fetch-watchdog", daemon=True)

    def __enter__(self) -> _Watchdog:
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


# -- http(s) -----------------------------------------------------------------------------------

AddrInfo = tuple[Any, ...]  # one getaddrinfo entry: (family, type, proto, canonname, sockaddr)


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


def _resolve(hop: HttpTarget, deadline: _Deadline) -> list[AddrInfo]:
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


def _network_error(exc: BaseException, deadline: _Deadline, where: str) -> ClipperError:
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


def _fetch_http(url: str, dest_dir: Path, settings: FetchSettings, deadline: _Deadline,
                progress: Callable[[int], None] | None) -> tuple[Path, int, str | None]:
    hop = parse_http_url(url)
    tls: ssl.SSLContext | None = None
    with _Watchdog(deadline) as watchdog:
        for redirects in range(settings.max_redirects + 1):
            where = redact_url(hop.url)
            deadline.check()
            addresses = _validated_addresses(hop, _resolve(hop, deadline), settings.allow_private)
            if hop.scheme == "https":
                tls = tls or make_tls_context()
                conn: http.client.HTTPConnection = _PinnedHTTPSConnection(hop.host, hop.port, addresses,
                                                                          deadline.op_timeout(), tls)
            else:
                conn = _PinnedHTTPConnection(hop.host, hop.port, addresses, deadline.op_timeout())
            try:
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
                    conn.endheaders()
                    response = conn.getresponse()
                except ClipperError:
                    raise
                except Exception as exc:
                    raise _network_error(exc, deadline, where) from None
                if response.status in REDIRECT_STATUSES:
                    hop = _next_hop(hop, response.getheader("Location"), where, redirects, settings.max_redirects)
                    continue
                error = status_error(response.status, where)
                if error is not None:
                    raise error
                return _stream_body(response, sock, hop, dest_dir, settings, deadline, progress)
            finally:
                watchdog.watch(None)
                conn.close()
    raise AssertionError("unreachable: the redirect loop returns or raises")


def _next_hop(hop: HttpTarget, location: str | None, where: str, redirects: int, max_redirects: int) -> HttpTarget:
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


def _stream_body(response: http.client.HTTPResponse, sock: socket.socket, hop: HttpTarget,
                 dest_dir: Path, settings: FetchSettings, deadline: _Deadline,
                 progress: Callable[[int], None] | None) -> tuple[Path, int, str | None]:
    where = redact_url(hop.url)
    encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise PermanentError(f"source {where}: server sent Content-Encoding {encoding[:40]!r} despite "
                             "Accept-Encoding: identity")
    expected = None if response.chunked else response.length
    if expected is not None and expected > settings.max_bytes:
        raise PermanentError(f"source {where}: Content-Length {expected} exceeds fetch.max_bytes {settings.max_bytes}")
    content_type = (response.getheader("Content-Type") or "").strip()[:200] or None
    path = dest_dir / source_filename(urlsplit(hop.url).path)
    received = 0
    last_progress = time.monotonic()
    try:
        with open(path, "wb") as out:
            while True:
                deadline.check()
                try:
                    sock.settimeout(deadline.op_timeout())
                    chunk = response.read1(CHUNK_BYTES)
                except Exception as exc:
                    raise _network_error(exc, deadline, where) from None
                if not chunk:
                    break
                received += len(chunk)
                if received > settings.max_bytes:
                    raise PermanentError(f"source {where}: body exceeds fetch.max_bytes {settings.max_bytes}")
                out.write(chunk)
                if progress is not None and time.monotonic() - last_progress >= PROGRESS_EVERY:
                    progress(received)
                    last_progress = time.monotonic()
        deadline.check()  # an empty read may be the watchdog's doing
        if expected is not None and received < expected:
            raise TransientError(f"source {where}: truncated body, got {received} of {expected} bytes")
    except OSError as exc:  # network errors were classified above; this is the local disk
        path.unlink(missing_ok=True)
        raise TransientError(f"source {where}: cannot write {path} ({exc.strerror or type(exc).__name__})") from None
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if progress is not None:
        progress(received)
    return path, received, content_type


# -- file:// -----------------------------------------------------------------------------------

def _allowed_file_path(url: str, settings: FetchSettings) -> str:
    """The real path of a file:// source when it lies under `fetch.allow_file_roots`, checked
    before existence, so that a refusal says nothing about files outside the roots."""
    where = redact_url(url)
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise PermanentError(f"source {where}: file:// URLs must name a local path (no host)")
    try:
        real = os.path.realpath(unquote(parts.path))
        roots = [os.path.realpath(root) for root in settings.allow_file_roots]
    except (ValueError, OSError):
        raise PermanentError(f"source {where}: invalid file path") from None
    inside = any(real != root and os.path.commonpath([real, root]) == root for root in roots)
    if not parts.path.startswith("/") or not inside:
        raise PermanentError("file:// sources are allowed only under fetch.allow_file_roots")
    return real


def _fetch_file(url: str, settings: FetchSettings) -> tuple[Path, int]:
    where = redact_url(url)
    real = _allowed_file_path(url, settings)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise PermanentError(f"source {where}: no such file") from None
    except OSError as exc:
        raise PermanentError(f"source {where}: cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise PermanentError(f"source {where}: not a regular file")
    if not os.access(real, os.R_OK):
        raise PermanentError(f"source {where}: not readable by the daemon")
    if st.st_size > settings.max_bytes:
        raise PermanentError(f"source {where}: {st.st_size} bytes exceeds fetch.max_bytes {settings.max_bytes}")
    return Path(real), st.st_size


def check_source_policy(url: str, settings: FetchSettings) -> None:
    """What can be said about a source without fetching it (no DNS, no connection): scheme,
    URL form, literal addresses, file roots, bucket names. `clipper enqueue` uses it to refuse
    at once what the daemon would dead-letter anyway; fetching checks everything again."""
    where = redact_url(url)
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        raise PermanentError(f"source {where}: invalid URL") from None
    if scheme in ("http", "https"):
        hop = parse_http_url(url)
        if is_ip_literal(hop.host):
            reason = check_address(ipaddress.ip_address(hop.host), settings.allow_private)
            if reason is not None:
                raise PermanentError(f"source {where}: {reason}")
    elif scheme == "file":
        _allowed_file_path(url, settings)
    elif scheme == "s3":
        bucket, _ = parse_s3_url(url)
        if settings.s3_allow_buckets is not None and bucket not in settings.s3_allow_buckets:
            raise PermanentError(f"source {where}: bucket {bucket!r} is not in fetch.s3_allow_buckets")
    else:
        raise PermanentError(f"source {where[:100]}: scheme {scheme[:20] or '(none)'!r} is not allowed (http, https, s3, "
                             "or file under fetch.allow_file_roots)")


# -- entry point -------------------------------------------------------------------------------

def fetch_source(url: str, dest_dir: Path, settings: FetchSettings, *, control: JobControl | None = None,
                 progress: Callable[[int], None] | None = None) -> FetchedSource:
    """The whole source as a local file (in `dest_dir`, or in place for an allowed file://).

    Raises PermanentError (forbidden or invalid URL, 4xx, too large, too many redirects),
    TransientError (network, 5xx, 408/429, timeouts, truncated body) or Cancelled.
    """
    started = time.monotonic()
    where = redact_url(url)
    check_source_policy(url, settings)
    scheme = urlsplit(url).scheme.lower()
    deadline = _Deadline(settings, control, where)
    deadline.check()
    content_type: str | None
    if scheme in ("http", "https"):
        path, size, content_type = _fetch_http(url, Path(dest_dir), settings, deadline, progress)
    elif scheme == "file":
        (path, size), content_type = _fetch_file(url, settings), None
    else:
        path = Path(dest_dir) / source_filename(parse_s3_url(url)[1])
        size, content_type = fetch_s3(url, path, settings, check=deadline.check, progress=progress)
    return FetchedSource(path=path, url=where, bytes=size, seconds=round(time.monotonic() - started, 3),
                         content_type=content_type)
