"""Fetching a job's source into the job's scratch directory: the only module that knows where
source bytes come from (http, https, s3, and file under `fetch.allow_file_roots`).

Untrusted URLs and SSRF. Every connection this module makes to an http(s) source goes to an
address it has checked itself: the host is resolved once per hop with getaddrinfo, the hop is
refused if *any* resolved address is forbidden (`check_address`), and the socket is then opened
to exactly those validated addresses (`fetch_http.py`), while the Host header, TLS SNI
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

import http.client
import os
import re
import socket
import ssl
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from clipper.addresses import check_address, numeric_host
from clipper.errors import PermanentError, TransientError
from clipper.jobs.fetch_http import (
    REDIRECT_STATUSES,
    Deadline,
    HttpTarget,
    Watchdog,
    make_tls_context,
    network_error,
    next_hop,
    parse_http_url,
    send_request,
    status_error,
)
from clipper.jobs.fetch_s3 import PROGRESS_EVERY, fetch_s3, parse_s3_url
from clipper.jobs.spec import redact_url
from clipper.media.command import JobControl
from clipper.settings import FetchSettings

CHUNK_BYTES = 1024 * 1024
EXTENSION_RE = re.compile(r"[a-z0-9]{1,5}")

@dataclass(frozen=True)
class FetchedSource:
    path: Path  # local file with the whole source
    url: str  # redacted (no credentials, no query) for logs/manifest
    bytes: int
    seconds: float
    content_type: str | None


# -- URLs, names and statuses (pure) ---------------------------------------------------------------


def source_filename(url_path: str) -> str:
    """`source` plus the URL path's extension when it is a safe one ([a-z0-9]{1,5}), else `source`."""
    last = url_path.rsplit("/", 1)[-1]
    if "." not in last:
        return "source"
    ext = last.rsplit(".", 1)[1].lower()
    return f"source.{ext}" if EXTENSION_RE.fullmatch(ext) else "source"


# -- deadline, cancellation, watchdog --------------------------------------------------------------


# -- http(s) -----------------------------------------------------------------------------------



def _fetch_http(url: str, dest_dir: Path, settings: FetchSettings, deadline: Deadline,
                progress: Callable[[int], None] | None) -> tuple[Path, int, str | None]:
    hop = parse_http_url(url)
    tls: ssl.SSLContext | None = None
    with Watchdog(deadline) as watchdog:
        for redirects in range(settings.max_redirects + 1):
            where = redact_url(hop.url)
            if hop.scheme == "https":
                tls = tls or make_tls_context()
            conn, sock, response = send_request(hop, settings, deadline, watchdog, tls)
            try:
                if response.status in REDIRECT_STATUSES:
                    hop = next_hop(hop, response.getheader("Location"), where, redirects, settings.max_redirects)
                    continue
                error = status_error(response.status, where)
                if error is not None:
                    raise error
                return _stream_body(response, sock, hop, dest_dir, settings, deadline, progress)
            finally:
                watchdog.watch(None)
                conn.close()
    raise AssertionError("unreachable: the redirect loop returns or raises")


def _stream_body(response: http.client.HTTPResponse, sock: socket.socket, hop: HttpTarget,
                 dest_dir: Path, settings: FetchSettings, deadline: Deadline,
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
                    raise network_error(exc, deadline, where) from None
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
        address = numeric_host(hop.host)
        if address is not None:
            reason = check_address(address, settings.allow_private)
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
    deadline = Deadline(settings, control, where)
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
