"""fetch_source against a real local HTTP(S) server: statuses, redirects (and where they may
go), size limits, truncation, timeouts, cancellation, DNS pinning, and file:// roots.

The servers are started here (once per module) rather than in conftest.py, because they serve
routes only these tests need; every accepted TCP connection and every request is logged, so a
test can show that a refused source was never connected to.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from clipper import __version__
from clipper.errors import Cancelled, PermanentError, TransientError
from clipper.jobs import fetch
from clipper.jobs.fetch import FetchedSource, fetch_source
from clipper.media.command import JobControl
from clipper.settings import FetchSettings

LOOPBACK = "127.0.0.1"
BODY = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MiB: several 1 MiB reads
METADATA = "http://169.254.169.254/latest/meta-data"


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], log: TestServer):
        super().__init__(address, _Handler)
        self.log = log

    def verify_request(self, request, client_address) -> bool:  # called once per accepted connection
        with self.log.lock:
            self.log.connections += 1
        return True

    def handle_error(self, request, client_address) -> None:
        pass  # clients hanging up early (limits, cancels) are the point of several tests


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        log = self.server.log
        with log.lock:
            log.requests.append((self.command, self.path, dict(self.headers.items())))
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        parts = url.path.strip("/").split("/")
        route, rest = parts[0], parts[1:]
        if route == "media":
            self._send(200, BODY, "video/mp4")
        elif route == "headers":
            self._send(200, json.dumps(dict(self.headers.items())).encode(), "application/json")
        elif route == "status":
            self._send(int(rest[0]), b"status body\n")
        elif route == "redirect":
            self._redirect(int(query.get("code", 302)), query["to"])
        elif route == "chain":  # /chain/N/name: N more redirects, then the body
            n = int(rest[0])
            self._redirect(302, f"/chain/{n - 1}/{rest[1]}" if n > 0 else f"/media/{rest[1]}")
        elif route == "big":  # announces more than the limit (and sends it)
            self._send(200, b"x" * int(query["n"]))
        elif route == "nolength":  # close-delimited body, no Content-Length
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"y" * int(query["n"]))
            self.close_connection = True
        elif route == "truncated":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(BODY[: len(BODY) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif route == "trickle":  # 1 KiB every `every` seconds, for a long time
            every = float(query.get("every", "0.05"))
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
            try:
                for _ in range(int(60 / every)):
                    self.wfile.write(b"z" * 1024)
                    self.wfile.flush()
                    time.sleep(every)
            except OSError:
                pass
        elif route == "stall":  # headers and a little body, then silence
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(b"s" * 10)
            self.wfile.flush()
            log.release.wait(30)
        elif route == "slowheaders":  # a status line, then a header byte every 0.3 s
            try:
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for _ in range(200):
                    self.wfile.write(b"X")
                    self.wfile.flush()
                    time.sleep(0.3)
            except OSError:
                pass
        elif route == "gzip":
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"\x1f\x8b\x08\x00")
        else:
            self._send(404, b"not found\n")

    def _send(self, code: int, body: bytes, content_type: str = "application/octet-stream") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, code: int, location: str) -> None:
        self.send_response(code)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


class TestServer:
    __test__ = False  # not a test class

    def __init__(self, tls: ssl.SSLContext | None = None):
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.connections = 0
        self.release = threading.Event()
        self.server = _Server((LOOPBACK, 0), self)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.scheme = "https" if tls else "http"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = LOOPBACK) -> str:
        return f"{self.scheme}://{host}:{self.port}/{path.lstrip('/')}"

    def paths(self) -> list[str]:
        with self.lock:
            return [path for _, path, _ in self.requests]

    def headers(self, index: int = -1) -> dict[str, str]:
        with self.lock:
            return {k.lower(): v for k, v in self.requests[index][2].items()}

    def reset(self) -> None:
        self.release.set()
        with self.lock:
            self.requests.clear()
            self.connections = 0
        self.release = threading.Event()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[TestServer]:
    srv = TestServer()
    yield srv
    srv.stop()


@pytest.fixture
def web(server: TestServer) -> Iterator[TestServer]:
    server.reset()
    yield server
    server.reset()


def settings(**overrides) -> FetchSettings:
    values = {"allow_private": True, "timeout": 10.0, "connect_timeout": 5.0, "max_redirects": 3}
    values.update(overrides)
    return FetchSettings(**values)


def quoted(url: str) -> str:
    return urllib.parse.quote(url, safe="")


# -- the happy path ------------------------------------------------------------------------------

def test_fetches_the_whole_body_into_dest_dir(web: TestServer, tmp_path: Path) -> None:
    seen: list[int] = []
    got = fetch_source(web.url("/media/v/123.mp4"), tmp_path, settings(), progress=seen.append)
    assert isinstance(got, FetchedSource)
    assert got.path == tmp_path / "source.mp4"
    assert got.path.read_bytes() == BODY
    assert got.bytes == len(BODY)
    assert got.content_type == "video/mp4"
    assert got.url == web.url("/media/v/123.mp4")
    assert got.seconds >= 0
    assert seen and seen[-1] == len(BODY) and seen == sorted(seen)
    assert os.listdir(tmp_path) == ["source.mp4"]


def test_sends_user_agent_identity_encoding_and_the_host_name(web: TestServer, tmp_path: Path) -> None:
    got = fetch_source(web.url("/headers", host="localhost"), tmp_path, settings())
    headers = {k.lower(): v for k, v in json.loads(got.path.read_bytes()).items()}
    assert headers["user-agent"] == f"clipper/{__version__}"
    assert headers["accept-encoding"] == "identity"
    assert headers["host"] == f"localhost:{web.port}"
    assert "authorization" not in headers
    assert got.path.name == "source"


def test_url_userinfo_becomes_basic_auth_and_is_never_reported(web: TestServer, tmp_path: Path) -> None:
    got = fetch_source(web.url("/headers").replace("://", "://alice:s%3Acret@"), tmp_path, settings())
    headers = {k.lower(): v for k, v in json.loads(got.path.read_bytes()).items()}
    assert headers["authorization"] == "Basic YWxpY2U6czpjcmV0"  # alice:s:cret
    assert "alice" not in got.url and "cret" not in got.url


def test_error_messages_carry_no_credentials_or_query(web: TestServer, tmp_path: Path) -> None:
    url = web.url("/status/404?token=TOPSECRET").replace("://", "://bob:hunter2@")
    with pytest.raises(PermanentError) as exc:
        fetch_source(url, tmp_path, settings())
    text = str(exc.value)
    assert "404" in text and f"{LOOPBACK}:{web.port}/status/404" in text
    assert "TOPSECRET" not in text and "hunter2" not in text and "bob" not in text


# -- statuses ------------------------------------------------------------------------------------

def test_404_is_permanent_and_names_status_and_url(web: TestServer, tmp_path: Path) -> None:
    with pytest.raises(PermanentError) as exc:
        fetch_source(web.url("/404/x.mp4"), tmp_path, settings())
    assert "404" in str(exc.value) and web.url("/404/x.mp4") in str(exc.value)
    assert os.listdir(tmp_path) == []


def test_503_is_transient(web: TestServer, tmp_path: Path) -> None:
    with pytest.raises(TransientError) as exc:
        fetch_source(web.url("/status/503"), tmp_path, settings())
    assert "503" in str(exc.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("code, error", [(400, PermanentError), (401, PermanentError), (403, PermanentError),
                                         (410, PermanentError), (408, TransientError), (429, TransientError),
                                         (500, TransientError), (502, TransientError)])
def test_status_classification(web: TestServer, tmp_path: Path, code: int, error: type) -> None:
    with pytest.raises(error) as exc:
        fetch_source(web.url(f"/status/{code}"), tmp_path, settings())
    assert str(code) in str(exc.value)


def test_content_encoding_other_than_identity_is_refused(web: TestServer, tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="Content-Encoding"):
        fetch_source(web.url("/gzip"), tmp_path, settings())


# -- redirects -----------------------------------------------------------------------------------

@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirect_is_followed(web: TestServer, tmp_path: Path, code: int) -> None:
    got = fetch_source(web.url(f"/redirect?code={code}&to=" + quoted("/media/final.webm")), tmp_path, settings())
    assert got.path.read_bytes() == BODY
    assert got.path.name == "source.webm"  # named after the URL that served it
    assert web.paths() == [f"/redirect?code={code}&to=%2Fmedia%2Ffinal.webm", "/media/final.webm"]


def test_redirect_to_metadata_address_is_refused_even_with_allow_private(web: TestServer, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(PermanentError) as exc:
        fetch_source(web.url("/redirect?to=" + quoted(METADATA)), tmp_path, settings(allow_private=True))
    assert "169.254.169.254" in str(exc.value) and "link-local" in str(exc.value)
    assert time.monotonic() - started < 2  # refused, not tried and timed out
    assert len(web.paths()) == 1


@pytest.mark.parametrize("target", [
    "http://[::ffff:169.254.169.254]/latest", "http://2852039166/latest", "http://0.0.0.0:1/x",
    "http://[fe80::1]/x",
])
def test_redirect_to_disguised_forbidden_addresses_is_refused(web: TestServer, tmp_path: Path, target: str) -> None:
    with pytest.raises(PermanentError, match="refused"):
        fetch_source(web.url("/redirect?to=" + quoted(target)), tmp_path, settings(allow_private=True))


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/x.mp4", "gopher://127.0.0.1:70/_x",
                                    "s3://bucket/key", "data:video/mp4;base64,AAAA"])
def test_redirect_to_another_scheme_is_permanent(web: TestServer, tmp_path: Path, target: str) -> None:
    with pytest.raises(PermanentError, match="redirect"):
        fetch_source(web.url("/redirect?to=" + quoted(target)), tmp_path, settings())
    assert len(web.paths()) == 1


def test_redirect_chain_up_to_max_redirects_is_followed(web: TestServer, tmp_path: Path) -> None:
    # /chain/2 -> /chain/1 -> /chain/0 -> /media/a.mp4: exactly 3 redirects
    got = fetch_source(web.url("/chain/2/a.mp4"), tmp_path, settings(max_redirects=3))
    assert got.path.read_bytes() == BODY
    assert web.paths() == ["/chain/2/a.mp4", "/chain/1/a.mp4", "/chain/0/a.mp4", "/media/a.mp4"]


def test_redirect_chain_longer_than_max_redirects_is_permanent(web: TestServer, tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="more than 2 redirects"):
        fetch_source(web.url("/chain/5/a.mp4"), tmp_path, settings(max_redirects=2))
    assert len(web.paths()) == 3  # the original request and two followed hops, no more


def test_max_redirects_zero_follows_none(web: TestServer, tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="redirects"):
        fetch_source(web.url("/chain/0/a.mp4"), tmp_path, settings(max_redirects=0))
    assert len(web.paths()) == 1


def test_credentials_follow_same_origin_redirects_only(web: TestServer, tmp_path: Path) -> None:
    same = web.url("/redirect?to=" + quoted("/headers")).replace("://", "://u:p@")
    got = fetch_source(same, tmp_path, settings())
    assert "Authorization" in json.loads(got.path.read_bytes())
    other = web.url("/redirect?to=" + quoted(web.url("/headers", host="localhost"))).replace("://", "://u:p@")
    (tmp_path / "second").mkdir()
    got = fetch_source(other, tmp_path / "second", settings())
    assert "Authorization" not in json.loads(got.path.read_bytes())


# -- private addresses and DNS -------------------------------------------------------------------

@pytest.mark.parametrize("host", [LOOPBACK, "localhost", "[::ffff:127.0.0.1]", "127.1", "2130706433"])
def test_loopback_refused_without_allow_private_and_never_connected(web: TestServer, tmp_path: Path,
                                                                      host: str) -> None:
    with pytest.raises(PermanentError) as exc:
        fetch_source(f"http://{host}:{web.port}/media/a.mp4", tmp_path, settings(allow_private=False))
    text = str(exc.value)
    assert "loopback" in text and "fetch.allow_private" in text
    assert host.strip("[]") in text  # the host as given is named too
    time.sleep(0.1)
    assert web.connections == 0 and web.paths() == []
    assert os.listdir(tmp_path) == []


def test_dns_is_resolved_once_per_hop_and_the_connection_pinned(web: TestServer, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A rebinding name: the first answer is allowed, every later one is the metadata address.
    The fetch connects to the first answer and never asks again."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host, port, *args, **kwargs):
        if host == "rebind.test":
            lookups.append(host)
            address = LOOPBACK if len(lookups) == 1 else "169.254.169.254"
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    got = fetch_source(f"http://rebind.test:{web.port}/headers", tmp_path, settings())
    assert json.loads(got.path.read_bytes())["Host"] == f"rebind.test:{web.port}"
    assert lookups == ["rebind.test"]


def test_any_forbidden_address_among_several_refuses_the_host(web: TestServer, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def two_answers(host, port, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (LOOPBACK, port)),
                (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("169.254.169.254", port))]

    monkeypatch.setattr(socket, "getaddrinfo", two_answers)
    with pytest.raises(PermanentError) as exc:
        fetch_source(f"http://mixed.test:{web.port}/media/a.mp4", tmp_path, settings(allow_private=True))
    assert "mixed.test" in str(exc.value) and "169.254.169.254" in str(exc.value)
    assert web.connections == 0


def test_unreachable_first_address_falls_back_to_the_next_validated_one(web: TestServer, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    closed = socket.socket()
    closed.bind((LOOPBACK, 0))
    dead_address = ("127.0.0.2", web.port)  # nobody listens on 127.0.0.2

    def two_answers(host, port, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", dead_address),
                (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (LOOPBACK, port))]

    monkeypatch.setattr(socket, "getaddrinfo", two_answers)
    got = fetch_source(f"http://two.test:{web.port}/media/a.mp4", tmp_path, settings())
    closed.close()
    assert got.bytes == len(BODY)


@pytest.mark.parametrize("errno, error", [(socket.EAI_NONAME, PermanentError), (socket.EAI_AGAIN, TransientError)])
def test_dns_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, errno: int, error: type) -> None:
    def failing(host, port, *args, **kwargs):
        raise socket.gaierror(errno, "lookup failed")

    monkeypatch.setattr(socket, "getaddrinfo", failing)
    with pytest.raises(error, match="nowhere.test"):
        fetch_source("http://nowhere.test/a.mp4", tmp_path, settings())


def test_nonexistent_name_is_permanent(tmp_path: Path) -> None:
    with pytest.raises((PermanentError, TransientError)) as exc:  # transient only when DNS itself is down
        fetch_source("http://does-not-exist.invalid/a.mp4", tmp_path, settings())
    assert "does-not-exist.invalid" in str(exc.value)


def test_connection_refused_is_transient(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port = s.getsockname()[1]
    with pytest.raises(TransientError, match="refused"):
        fetch_source(f"http://{LOOPBACK}:{port}/a.mp4", tmp_path, settings())


# -- size limits and truncation ------------------------------------------------------------------

def test_content_length_above_max_bytes_is_permanent_before_reading(web: TestServer, tmp_path: Path) -> None:
    with pytest.raises(PermanentError) as exc:
        fetch_source(web.url("/big?n=5000"), tmp_path, settings(max_bytes=4096))
    assert "5000" in str(exc.value) and "fetch.max_bytes" in str(exc.value)
    assert os.listdir(tmp_path) == []  # nothing was written


def test_streamed_body_above_max_bytes_is_permanent(web: TestServer, tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="fetch.max_bytes"):
        fetch_source(web.url("/nolength?n=3000000"), tmp_path, settings(max_bytes=2_000_000))
    assert os.listdir(tmp_path) == []  # the partial file is removed


def test_body_without_content_length_is_read_to_the_end(web: TestServer, tmp_path: Path) -> None:
    got = fetch_source(web.url("/nolength?n=1500000"), tmp_path, settings())
    assert got.bytes == 1_500_000 == got.path.stat().st_size


def test_body_of_exactly_max_bytes_is_accepted(web: TestServer, tmp_path: Path) -> None:
    assert fetch_source(web.url("/big?n=4096"), tmp_path, settings(max_bytes=4096)).bytes == 4096


def test_truncated_body_is_transient(web: TestServer, tmp_path: Path) -> None:
    with pytest.raises(TransientError) as exc:
        fetch_source(web.url("/truncated/a.mp4"), tmp_path, settings())
    assert "truncated" in str(exc.value) and str(len(BODY)) in str(exc.value)
    assert os.listdir(tmp_path) == []


# -- time limits and cancellation ----------------------------------------------------------------

def test_overall_deadline_is_transient_timed_out(web: TestServer, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(TransientError, match="timed out after 1 s"):
        fetch_source(web.url("/trickle"), tmp_path, settings(timeout=1, connect_timeout=5))
    assert time.monotonic() - started < 2
    assert os.listdir(tmp_path) == []


def test_headers_trickled_a_byte_at_a_time_cannot_outlast_the_deadline(web: TestServer, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(TransientError, match="timed out after 1 s"):
        fetch_source(web.url("/slowheaders"), tmp_path, settings(timeout=1, connect_timeout=5))
    assert time.monotonic() - started < 2


def test_a_stalled_read_times_out_after_connect_timeout(web: TestServer, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(TransientError, match="fetch.connect_timeout"):
        fetch_source(web.url("/stall"), tmp_path, settings(timeout=10, connect_timeout=0.5))
    assert time.monotonic() - started < 3


def test_cancel_between_chunks(web: TestServer, tmp_path: Path) -> None:
    control = JobControl("j")

    def progress(n: int) -> None:
        control.cancel()

    with pytest.raises(Cancelled):
        fetch_source(web.url("/trickle?every=0.01"), tmp_path, settings(), control=control, progress=progress)
    assert os.listdir(tmp_path) == []


def test_cancel_interrupts_a_blocked_read_promptly(web: TestServer, tmp_path: Path) -> None:
    control = JobControl("j")
    threading.Timer(0.3, control.cancel).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        fetch_source(web.url("/stall"), tmp_path, settings(timeout=30, connect_timeout=20), control=control)
    assert time.monotonic() - started < 1.5


def test_already_cancelled_makes_no_connection(web: TestServer, tmp_path: Path) -> None:
    control = JobControl("j")
    control.cancel()
    with pytest.raises(Cancelled):
        fetch_source(web.url("/media/a.mp4"), tmp_path, settings(), control=control)
    assert web.connections == 0


# -- https ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestServer, Path]]:
    assert shutil.which("openssl"), "openssl makes the test certificate (make system-deps installs it)"
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    srv = TestServer(tls=context)
    yield srv, cert
    srv.stop()


def test_https_verifies_the_certificate_against_the_host_name(tls_server, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    srv, cert = tls_server
    monkeypatch.setattr(fetch, "make_tls_context", lambda: ssl.create_default_context(cafile=str(cert)))
    # connected to the pinned 127.0.0.1, while SNI and the certificate check use "localhost"
    got = fetch_source(srv.url("/headers", host="localhost"), tmp_path, settings())
    assert json.loads(got.path.read_bytes())["Host"] == f"localhost:{srv.port}"
    # the same server by address: the certificate does not name 127.0.0.1
    with pytest.raises(PermanentError, match="certificate"):
        fetch_source(srv.url("/headers"), tmp_path, settings())


def test_https_with_an_untrusted_certificate_is_permanent(tls_server, tmp_path: Path) -> None:
    srv, _ = tls_server
    with pytest.raises(PermanentError, match="certificate"):
        fetch_source(srv.url("/media/a.mp4", host="localhost"), tmp_path, settings())
    assert os.listdir(tmp_path) == []


# -- file:// -------------------------------------------------------------------------------------

@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    inside, outside = tmp_path / "media", tmp_path / "private"
    inside.mkdir()
    outside.mkdir()
    (inside / "a.mp4").write_bytes(b"inside")
    (inside / "sub").mkdir()
    (inside / "sub" / "b c.mp4").write_bytes(b"spaced")
    (outside / "secret.mp4").write_bytes(b"secret")
    return inside, outside


def test_file_inside_a_root_is_returned_in_place(roots: tuple[Path, Path], tmp_path: Path) -> None:
    inside, _ = roots
    dest = tmp_path / "dest"
    dest.mkdir()
    got = fetch_source(f"file://{inside}/a.mp4", dest, settings(allow_file_roots=(inside,)))
    assert got.path == (inside / "a.mp4").resolve()
    assert got.bytes == 6 and got.url == f"file://{inside}/a.mp4"
    assert os.listdir(dest) == []  # not copied
    got = fetch_source(f"file://{inside}/sub/b%20c.mp4", dest, settings(allow_file_roots=(inside,)))
    assert got.path.read_bytes() == b"spaced"


@pytest.mark.parametrize("relative", ["private/secret.mp4", "media/../private/secret.mp4", "media/../../etc/passwd"])
def test_file_outside_the_roots_is_refused(roots: tuple[Path, Path], tmp_path: Path, relative: str) -> None:
    inside, _ = roots
    with pytest.raises(PermanentError, match="allowed only under fetch.allow_file_roots"):
        fetch_source(f"file://{tmp_path}/{relative}", tmp_path, settings(allow_file_roots=(inside,)))


def test_file_refused_when_no_roots_are_configured(roots: tuple[Path, Path], tmp_path: Path) -> None:
    inside, _ = roots
    with pytest.raises(PermanentError, match="allowed only under fetch.allow_file_roots"):
        fetch_source(f"file://{inside}/a.mp4", tmp_path, settings())
    with pytest.raises(PermanentError, match="allowed only under fetch.allow_file_roots"):
        fetch_source("file:///etc/passwd", tmp_path, settings())


def test_symlink_escaping_the_root_is_refused(roots: tuple[Path, Path], tmp_path: Path) -> None:
    inside, outside = roots
    (inside / "link.mp4").symlink_to(outside / "secret.mp4")
    (inside / "dirlink").symlink_to(outside)
    for url in (f"file://{inside}/link.mp4", f"file://{inside}/dirlink/secret.mp4"):
        with pytest.raises(PermanentError, match="allowed only under fetch.allow_file_roots"):
            fetch_source(url, tmp_path, settings(allow_file_roots=(inside,)))


def test_symlink_within_the_root_and_a_symlinked_root_work(roots: tuple[Path, Path], tmp_path: Path) -> None:
    inside, _ = roots
    (inside / "alias.mp4").symlink_to(inside / "a.mp4")
    got = fetch_source(f"file://{inside}/alias.mp4", tmp_path, settings(allow_file_roots=(inside,)))
    assert got.path == (inside / "a.mp4").resolve()
    root_link = tmp_path / "root-link"
    root_link.symlink_to(inside)
    got = fetch_source(f"file://{inside}/a.mp4", tmp_path, settings(allow_file_roots=(root_link,)))
    assert got.bytes == 6


def test_a_sibling_directory_sharing_the_prefix_is_not_inside(roots: tuple[Path, Path], tmp_path: Path) -> None:
    inside, _ = roots
    sibling = tmp_path / "media-evil"
    sibling.mkdir()
    (sibling / "x.mp4").write_bytes(b"x")
    with pytest.raises(PermanentError, match="allowed only under"):
        fetch_source(f"file://{sibling}/x.mp4", tmp_path, settings(allow_file_roots=(inside,)))


def test_missing_file_and_non_regular_file_are_permanent(roots: tuple[Path, Path], tmp_path: Path) -> None:
    inside, _ = roots
    s = settings(allow_file_roots=(inside,))
    with pytest.raises(PermanentError, match="no such file"):
        fetch_source(f"file://{inside}/missing.mp4", tmp_path, s)
    with pytest.raises(PermanentError, match="not a regular file"):
        fetch_source(f"file://{inside}/sub", tmp_path, s)
    os.mkfifo(inside / "fifo")
    with pytest.raises(PermanentError, match="not a regular file"):
        fetch_source(f"file://{inside}/fifo", tmp_path, s)


def test_relative_file_url_is_refused(roots: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inside, _ = roots
    monkeypatch.chdir(inside)
    with pytest.raises(PermanentError, match="allowed only under"):
        fetch_source("file:a.mp4", tmp_path, settings(allow_file_roots=(inside,)))


def test_unwritable_dest_dir_is_transient(web: TestServer, tmp_path: Path) -> None:
    with pytest.raises(TransientError, match="cannot write"):
        fetch_source(web.url("/media/a.mp4"), tmp_path / "missing", settings())


def test_file_url_with_a_host_is_refused(roots: tuple[Path, Path], tmp_path: Path) -> None:
    inside, _ = roots
    with pytest.raises(PermanentError, match="local path"):
        fetch_source(f"file://otherhost{inside}/a.mp4", tmp_path, settings(allow_file_roots=(inside,)))
    assert fetch_source(f"file://localhost{inside}/a.mp4", tmp_path, settings(allow_file_roots=(inside,))).bytes == 6


def test_file_above_max_bytes_is_permanent(roots: tuple[Path, Path], tmp_path: Path) -> None:
    inside, _ = roots
    with pytest.raises(PermanentError, match="fetch.max_bytes"):
        fetch_source(f"file://{inside}/a.mp4", tmp_path, settings(allow_file_roots=(inside,), max_bytes=5))


# -- other schemes -------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["gopher://127.0.0.1:70/_x", "ftp://127.0.0.1/x.mp4", "concat:/etc/passwd|/etc/hosts",
                                 "data:video/mp4;base64,AAAA", "/etc/passwd", "HTTP//x"])
def test_other_schemes_are_permanent(tmp_path: Path, url: str) -> None:
    with pytest.raises(PermanentError, match="scheme"):
        fetch_source(url, tmp_path, settings())


def test_s3_endpoint_down_is_transient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the error path; fetching from a real S3 server is tested with the pipeline."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port = s.getsockname()[1]
    s3 = settings(s3_endpoint_url=f"http://{LOOPBACK}:{port}", s3_region="us-east-1", connect_timeout=1)
    with pytest.raises(TransientError, match="s3://bucket/key.mp4"):
        fetch_source("s3://bucket/key.mp4", tmp_path, s3)
    assert os.listdir(tmp_path) == []
