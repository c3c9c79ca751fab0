"""Byte ranges of an http(s) source from its origin, through fetch.py's SSRF-safe client.

Every request goes through `fetch.send_request`: the host is resolved and checked for each new
connection, the socket is pinned to the checked addresses, redirects are followed here one hop
at a time and re-validated (`fetch.next_hop`), a watchdog ends a blocked read when the job is
cancelled or `fetch.timeout` (per request) passes. Idle connections are kept for the next
range (keep-alive), never shared between jobs.

`open` asks for the first block (`Range: bytes=0-N`), conditionally when the cache already
knows a version of this URL (`If-None-Match` / `If-Modified-Since`): a 304 confirms it without
a body. Its answer fixes the version (size, ETag, Last-Modified) the job reads; `read` then asks
for closed ranges only, and a response whose validator or size differs is refused, so bytes of
two versions are never mixed. An origin that ignores Range answers 200: `open` then hands back
the whole body as a stream.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from clipper.errors import ClipperError, PermanentError, TransientError
from clipper.jobs.fetch_http import (
    REDIRECT_STATUSES,
    Deadline,
    HttpTarget,
    Watchdog,
    network_error,
    next_hop,
    parse_http_url,
    send_request,
    status_error,
)
from clipper.jobs.spec import redact_url
from clipper.media.command import JobControl
from clipper.settings import FetchSettings

READ_CHUNK = 64 * 1024
CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
# Answers about the source itself, remembered by the failure cache (transient ones never are).
REMEMBERED_STATUSES = frozenset({401, 403, 404, 410})


class SourceRefused(PermanentError):
    """A permanent answer about the source itself (gone, forbidden, not media): the failure
    cache remembers it for `cache.failure_ttl`."""


@dataclass(frozen=True)
class Version:
    """Which bytes a URL stood for when it was read: its size and validators."""

    size: int | None
    etag: str | None
    last_modified: str | None
    content_type: str | None = None

    @property
    def validator(self) -> str | None:
        """What identifies this version across jobs; None when the origin sends neither an
        ETag nor a Last-Modified (then the bytes are never shared between jobs)."""
        if self.etag:
            return f"etag:{self.etag}|size:{self.size}"
        if self.last_modified:
            return f"lm:{self.last_modified}|size:{self.size}"
        return None

    def same_as(self, other: Version) -> bool:
        return (self.size, self.etag, self.last_modified) == (other.size, other.etag, other.last_modified)


@dataclass
class Opened:
    """The answer to `open`: 304 (the known version holds), 206 (first block in `chunks`) or
    200 (the origin ignored Range: the whole body in `chunks`)."""

    status: int
    version: Version
    chunks: Iterator[bytes]
    drop: Callable[[], None] | None = None

    def discard(self) -> None:
        """Drop a body we do not want (its connection is closed, not reused)."""
        if self.drop is not None:
            self.drop()


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """`bytes a-b/total` -> (a, b, total or None for `*`); None when absent or malformed (pure)."""
    m = CONTENT_RANGE_RE.match(value or "")
    if not m:
        return None
    return int(m[1]), int(m[2]), None if m[3] == "*" else int(m[3])


def _version_of(response: http.client.HTTPResponse, size: int | None) -> Version:
    def header(name: str) -> str | None:
        value = (response.getheader(name) or "").strip()
        return value[:300] or None

    content_type = header("Content-Type")
    return Version(size, header("ETag"), header("Last-Modified"), content_type[:200] if content_type else None)


class _Exchange:
    """One request and its response; the connection goes back to the pool when the body was
    read to its end and the server keeps it open."""

    def __init__(self, origin: HttpOrigin, conn: http.client.HTTPConnection, sock: socket.socket,
                 response: http.client.HTTPResponse, deadline: Deadline, watchdog: Watchdog):
        self.origin, self.conn, self.sock, self.response = origin, conn, sock, response
        self.deadline, self.watchdog = deadline, watchdog

    def chunks(self) -> Iterator[bytes]:
        try:
            while True:
                self.deadline.check()
                try:
                    self.sock.settimeout(self.deadline.op_timeout())
                    chunk = self.response.read1(READ_CHUNK)
                except Exception as exc:
                    raise network_error(exc, self.deadline, self.origin.where) from None
                if not chunk:
                    break
                self.origin.count(len(chunk))
                yield chunk
            self.deadline.check()  # an empty read may be the watchdog's doing
            if self.response.length:  # http.client counts down what it still expects
                raise TransientError(f"source {self.origin.where}: connection closed early (truncated body)")
        finally:
            self.close()

    def drop(self) -> None:
        self.conn.close()
        self.close()

    def close(self) -> None:
        self.watchdog.watch(None)
        self.watchdog.__exit__(None, None, None)
        finished = self.response.isclosed() or self.response.length == 0  # read1 leaves a 0-length body open
        if finished and not self.response.will_close and self.conn.sock is not None:
            self.response.close()
            self.origin.keep(self.conn, self.sock)
        else:
            self.conn.close()


class HttpOrigin:
    """Range requests to one http(s) source for one job (see the module doc)."""

    def __init__(self, url: str, settings: FetchSettings, control: JobControl):
        self.settings = settings
        self.control = control
        self.where = redact_url(url)
        self.hop: HttpTarget = parse_http_url(url)
        self.bytes = 0  # body bytes received from the origin
        self._tls: ssl.SSLContext | None = None
        self._idle: list[tuple[http.client.HTTPConnection, socket.socket]] = []
        self._lock = threading.Lock()

    def count(self, n: int) -> None:
        with self._lock:
            self.bytes += n

    def keep(self, conn: http.client.HTTPConnection, sock: socket.socket) -> None:
        with self._lock:
            self._idle.append((conn, sock))

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()

    def _request(self, headers: tuple[tuple[str, str], ...]) -> _Exchange:
        """Send a GET (on an idle kept-alive connection when there is one, else on a new pinned
        one), following redirects; the final hop is remembered for the next requests."""
        for redirects in range(self.settings.max_redirects + 1):
            deadline = Deadline(self.settings, self.control, self.where)
            watchdog = Watchdog(deadline).__enter__()
            try:
                conn, sock, response = self._send(deadline, watchdog, headers)
            except BaseException:
                watchdog.__exit__(None, None, None)
                raise
            exchange = _Exchange(self, conn, sock, response, deadline, watchdog)
            if response.status not in REDIRECT_STATUSES:
                return exchange
            location = response.getheader("Location")
            exchange.drop()
            self.hop = next_hop(self.hop, location, redact_url(self.hop.url), redirects, self.settings.max_redirects)
        raise AssertionError("unreachable: next_hop raises past fetch.max_redirects")

    def _send(self, deadline: Deadline, watchdog: Watchdog, headers: tuple[tuple[str, str], ...]
              ) -> tuple[http.client.HTTPConnection, socket.socket, http.client.HTTPResponse]:
        with self._lock:
            kept = self._idle.pop() if self._idle else None
        if kept is not None:
            conn, sock = kept
            watchdog.watch(sock)
            try:
                sock.settimeout(deadline.op_timeout())
                conn.request("GET", self.hop.target, headers=dict(self._base_headers() + headers))
                return conn, sock, conn.getresponse()
            except (OSError, http.client.HTTPException):
                conn.close()  # the server closed the idle connection: open a new one below
        if self.hop.scheme == "https" and self._tls is None:
            from clipper.jobs.fetch_http import make_tls_context

            self._tls = make_tls_context()
        return send_request(self.hop, self.settings, deadline, watchdog, self._tls, headers)

    def _base_headers(self) -> tuple[tuple[str, str], ...]:
        from clipper.jobs.fetch_http import USER_AGENT

        base = (("User-Agent", USER_AGENT), ("Accept-Encoding", "identity"), ("Accept", "*/*"))
        return base + ((("Authorization", self.hop.authorization),) if self.hop.authorization else ())

    def open(self, length: int, known: Version | None) -> Opened:
        """The first `length` bytes, or 304 when `known` still holds (module doc)."""
        headers: tuple[tuple[str, str], ...] = (("Range", f"bytes=0-{length - 1}"),)
        if known is not None and known.etag:
            headers += (("If-None-Match", known.etag),)
        elif known is not None and known.last_modified:
            headers += (("If-Modified-Since", known.last_modified),)
        exchange = self._request(headers)
        response = exchange.response
        try:
            if response.status == 304 and known is not None:
                for _ in exchange.chunks():  # no body; reading to its end frees the connection
                    pass
                return Opened(304, known, iter(()))
            if response.status == 416:  # an empty file has no byte 0
                raise SourceRefused(f"source {self.where}: empty file (HTTP 416 for its first byte)")
            self._check_status(response.status)
            self._check_encoding(response)
            if response.status == 206:
                parsed = parse_content_range(response.getheader("Content-Range"))
                if parsed is None or parsed[0] != 0:
                    raise PermanentError(f"source {self.where}: invalid Content-Range in a 206 answer")
                return Opened(206, _version_of(response, parsed[2]), exchange.chunks(), exchange.drop)
            size = None if response.chunked else response.length
            return Opened(200, _version_of(response, size), exchange.chunks(), exchange.drop)
        except BaseException:
            exchange.drop()
            raise

    def read(self, start: int, end: int, version: Version) -> bytes:
        """Bytes start..end (inclusive) of `version`; a changed source is a TransientError (the
        retry reads the new version from the start)."""
        headers: tuple[tuple[str, str], ...] = (("Range", f"bytes={start}-{end}"),)
        exchange = self._request(headers)
        response = exchange.response
        try:
            self._check_status(response.status)
            self._check_encoding(response)
            parsed = parse_content_range(response.getheader("Content-Range"))
            got = _version_of(response, parsed[2] if parsed else None)
            if response.status != 206 or parsed is None or not got.same_as(version):
                raise TransientError(f"source {self.where}: changed while being read (validator or size "
                                     "differs, or Range no longer honoured); the retry reads it again")
            if parsed[:2] != (start, end):
                raise TransientError(f"source {self.where}: asked for bytes {start}-{end}, got {parsed[0]}-{parsed[1]}")
        except BaseException:
            exchange.drop()
            raise
        data = b"".join(exchange.chunks())
        if len(data) != end - start + 1:
            raise TransientError(f"source {self.where}: short range, got {len(data)} of {end - start + 1} bytes")
        return data

    def _check_status(self, status: int) -> None:
        error: ClipperError | None = status_error(status, self.where)
        if error is None:
            return
        if status in REMEMBERED_STATUSES:
            raise SourceRefused(str(error))
        raise error

    def _check_encoding(self, response: http.client.HTTPResponse) -> None:
        encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
        if encoding != "identity":
            raise PermanentError(f"source {self.where}: server sent Content-Encoding {encoding[:40]!r} despite "
                                 "Accept-Encoding: identity")
