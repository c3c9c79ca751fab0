"""The loopback HTTP endpoint ffmpeg and ffprobe read a job's remote source through.

One server per daemon (`EndpointServer`, started with the first remote source): a threaded
HTTP server bound to 127.0.0.1 on an ephemeral port. Each job registers its source under its
own path, `/<unguessable token>/<name>` (`LocalEndpoint`), for as long as it runs; every other
path is a 404. (A server per job cost a thread start, a bind and a shutdown that waits for
the serving loop's poll: ~0.1 s per job, issue 8.)

It honours one Range (`bytes=a-`, `bytes=a-b`, `bytes=-n`) with 206 and Content-Range, so
ffmpeg seeks instead of reading through. The body is produced block by block from the cache
(`BlockSource.block`, which fetches a missing block from the origin), and only as fast as the
client takes it: the socket's send buffer is kept small, so when ffmpeg drops a connection to
seek elsewhere, little more than a block or two was fetched for nothing. Not smaller than a
block, though: with a 16 KiB buffer every write waited for ffmpeg's delayed ACK (~40 ms), so the
endpoint served 1.6 MB/s and a 10 s clip of a 720p source took 1.7 s instead of 0.12 s.
A long sequential read fetches several blocks per origin request (one more after every
READ_AHEAD_EVERY blocks, up to READ_AHEAD_MAX bytes): fewer round trips, and never more than a
fraction of what the read already took in advance.
"""

from __future__ import annotations

import http.server
import re
import secrets
import socket
import threading
from typing import Any

from clipper.errors import ClipperError
from clipper.media.command import LOOPBACK_URL_PREFIX
from clipper.sources.blocks import BlockSource

SEND_BUFFER = 64 * 1024  # bytes; the kernel doubles it (module doc: not less)
READ_AHEAD_EVERY = 16  # one more block per origin request after every 16 blocks of one response
READ_AHEAD_MAX = 1024 * 1024  # bytes per origin request at most
RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """One `bytes=` range -> (first, last) inclusive; None: no (usable) Range, send all;
    "unsatisfiable" past the end (pure)."""
    m = RANGE_RE.match(header or "")
    if not m or (not m[1] and not m[2]):
        return None
    if not m[1]:
        n = int(m[2])
        return (max(0, size - n), size - 1) if n else "unsatisfiable"
    first = int(m[1])
    last = min(int(m[2]), size - 1) if m[2] else size - 1
    if first >= size:
        return "unsatisfiable"
    return None if last < first else (first, last)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the job's log says what matters
        pass

    def setup(self) -> None:
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        # every write is a whole header or a whole block: Nagle would hold a block's last
        # partial segment until ffmpeg's delayed ACK (~40 ms), once per block
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()

    def do_GET(self) -> None:
        source = self.server.owner.lookup(self.path)
        self.close_connection = True
        if source is None:
            self._empty(404)
            return
        rng = parse_range(self.headers.get("Range"), source.size)
        if rng == "unsatisfiable":
            self._empty(416, {"Content-Range": f"bytes */{source.size}"})
            return
        first, last = rng if isinstance(rng, tuple) else (0, source.size - 1)
        self.send_response(206 if isinstance(rng, tuple) else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(last - first + 1))
        self.send_header("Accept-Ranges", "bytes")
        if isinstance(rng, tuple):
            self.send_header("Content-Range", f"bytes {first}-{last}/{source.size}")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()
        try:
            self._body(source, first, last)
        except (ClipperError, OSError):
            pass  # the client went away (a seek), or the origin failed: BlockSource.error keeps why

    def _body(self, source: BlockSource, first: int, last: int) -> None:
        index = first // source.block_size
        served = 0
        while first <= last:
            # read-ahead grows slowly with a sequential read, so a short read costs no extra
            # blocks and a long one needs few requests (module doc)
            ahead = min(served // READ_AHEAD_EVERY, max(0, READ_AHEAD_MAX // source.block_size - 1),
                        last // source.block_size - index)
            data = source.block(index, ahead)
            served += 1
            start, _ = source.span(index)
            piece = data[first - start:last - start + 1]
            self.connection.sendall(piece)
            first += len(piece)
            index += 1

    def do_HEAD(self) -> None:
        self._empty(405)

    def _empty(self, code: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: EndpointServer


class EndpointServer:
    """The daemon's loopback server for its jobs' sources (module doc); started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._sources: dict[str, BlockSource] = {}

    def serve(self, source: BlockSource, name: str) -> LocalEndpoint:
        """Serve `source` under a new unguessable path until the endpoint's `close`."""
        path = f"/{secrets.token_urlsafe(24)}/{name}"
        with self._lock:
            if self._server is None:
                self._server = _Server(("127.0.0.1", 0), _Handler)
                self._server.owner = self
                # a daemon thread: the daemon's exit does not wait for it (close() is for tests, scripts)
                self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                                name="source-endpoint", daemon=True)
                self._thread.start()
            self._sources[path] = source
            port = self._server.server_address[1]
        return LocalEndpoint(self, path, f"{LOOPBACK_URL_PREFIX}{port}{path}")

    def lookup(self, path: str) -> BlockSource | None:
        with self._lock:
            return self._sources.get(path)

    def drop(self, path: str) -> None:
        with self._lock:
            self._sources.pop(path, None)

    def close(self) -> None:
        with self._lock:
            server, thread, self._server, self._thread = self._server, self._thread, None, None
            self._sources.clear()
        if server is not None and thread is not None:
            server.shutdown()
            server.server_close()
            thread.join()


class LocalEndpoint:
    """One job's source on the daemon's loopback server, at `url`, until `close` (module doc)."""

    def __init__(self, server: EndpointServer, path: str, url: str):
        self._server, self._path, self.url = server, path, url

    def close(self) -> None:
        self._server.drop(self._path)
