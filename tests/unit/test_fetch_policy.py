"""Pure parts of fetching: which addresses a source may be on, URL parsing, the local file
name, and how HTTP statuses, DNS failures and S3 errors map to permanent/transient."""

import base64
import ipaddress
import re
import socket

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)

from clipper.addresses import check_address
from clipper.errors import PermanentError, TransientError
from clipper.jobs.fetch import source_filename
from clipper.jobs.fetch_http import dns_error, parse_http_url, status_error
from clipper.jobs.fetch_s3 import parse_s3_url, s3_error


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


# -- check_address ---------------------------------------------------------------------------------

ALWAYS_REFUSED = [
    "169.254.169.254",  # AWS/GCP/Azure metadata
    "169.254.170.2",  # ECS task metadata
    "169.254.0.1",
    "fe80::1",
    "fe80::a9fe:a9fe%eth0",
    "fe80::1%1",
    "224.0.0.1",
    "239.255.255.250",
    "ff02::1",
    "ff05::1:3",
    "0.0.0.0",
    "0.1.2.3",
    "::",
    "240.0.0.1",
    "255.255.255.254",
    "255.255.255.255",
    "100::1",
    "4000::1",
    "::ffff:169.254.169.254",  # IPv4-mapped
    "::ffff:0.0.0.0",
    "::ffff:224.0.0.1",
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b::169.254.169.254",
    "::169.254.169.254",  # IPv4-compatible (deprecated)
    "::127.0.0.1",
]

PRIVATE = [
    "127.0.0.1",
    "127.1.2.3",
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "100.64.0.1",  # CGNAT
    "100.127.255.254",
    "192.0.2.10",  # documentation
    "198.18.0.1",  # benchmarking
    "::1",
    "fc00::1",
    "fd12:3456:789a::1",
    "fec0::1",
    "2001:db8::1",
    "::ffff:127.0.0.1",
    "::ffff:10.1.2.3",
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
    "64:ff9b::10.0.0.1",  # NAT64 of 10.0.0.1
    "64:ff9b:1::808:808",  # local-use NAT64 prefix
]

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above CGNAT
    "172.15.255.255",  # just below 172.16/12
    "172.32.0.0",  # just above
    "169.253.255.255",  # just below link-local
    "169.255.0.0",  # just above
    "223.255.255.255",  # just below multicast
    "2001:4860:4860::8888",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "2002:808:808::1",  # 6to4 of 8.8.8.8
    "64:ff9b::8.8.8.8",  # NAT64 of 8.8.8.8
]


@pytest.mark.parametrize("address", ALWAYS_REFUSED)
@pytest.mark.parametrize("allow_private", [False, True])
def test_always_refused_whatever_allow_private(address: str, allow_private: bool) -> None:
    reason = check_address(ip(address), allow_private)
    assert reason, address


@pytest.mark.parametrize("address", PRIVATE)
def test_private_refused_unless_allowed(address: str) -> None:
    reason = check_address(ip(address), False)
    assert reason and "fetch.allow_private" in reason, (address, reason)
    assert check_address(ip(address), True) is None


@pytest.mark.parametrize("address", PUBLIC)
@pytest.mark.parametrize("allow_private", [False, True])
def test_public_allowed(address: str, allow_private: bool) -> None:
    assert check_address(ip(address), allow_private) is None


def test_metadata_refused_even_with_allow_private_and_says_why() -> None:
    reason = check_address(ip("169.254.169.254"), True)
    assert reason is not None and "link-local" in reason and "metadata" in reason


def test_loopback_allowed_only_with_allow_private() -> None:
    assert check_address(ip("127.0.0.1"), True) is None
    reason = check_address(ip("127.0.0.1"), False)
    assert reason is not None and "loopback" in reason


def test_mapped_loopback_refused_when_not_allowed_and_names_the_v4_address() -> None:
    reason = check_address(ip("::ffff:127.0.0.1"), False)
    assert reason is not None and "IPv4-mapped" in reason and "127.0.0.1" in reason
    assert check_address(ip("::ffff:127.0.0.1"), True) is None


def test_embedded_forms_name_their_form() -> None:
    assert "6to4" in check_address(ip("2002:a9fe:a9fe::1"), True)
    assert "NAT64" in check_address(ip("64:ff9b::a9fe:a9fe"), True)
    assert "broadcast" in check_address(ip("255.255.255.255"), True)
    assert "multicast" in check_address(ip("ff02::1"), True)
    assert "unspecified" in check_address(ip("::"), True)


def test_teredo_client_address_is_judged() -> None:
    # Teredo 2001:0::/32 carries the client's IPv4 address, bit-inverted, in the last 32 bits
    def teredo(client: str) -> ipaddress.IPv6Address:
        inverted = ~int(ipaddress.IPv4Address(client)) & 0xFFFFFFFF
        return ipaddress.IPv6Address((0x20010000 << 96) | (0x4136E378 << 64) | inverted)

    assert "Teredo" in check_address(teredo("169.254.169.254"), True)
    assert check_address(teredo("8.8.8.8"), False) is None


# -- URLs ------------------------------------------------------------------------------------------

def test_parse_http_url_basics() -> None:
    t = parse_http_url("https://CDN.Example.com/v/a%20b.mp4?sig=abc&x=1#frag")
    assert (t.scheme, t.host, t.port) == ("https", "cdn.example.com", 443)
    assert t.target == "/v/a%20b.mp4?sig=abc&x=1"
    assert t.authorization is None
    t = parse_http_url("http://example.com")
    assert (t.port, t.target) == (80, "/")
    t = parse_http_url("http://[::1]:8080/x")
    assert (t.host, t.port) == ("::1", 8080)


def test_parse_http_url_any_port() -> None:
    assert parse_http_url("http://example.com:1/x").port == 1
    assert parse_http_url("https://example.com:65535/x").port == 65535


def test_parse_http_url_userinfo_becomes_basic_auth() -> None:
    t = parse_http_url("https://us%40er:p%3Ass@example.com/x.mp4")
    assert t.authorization == "Basic " + base64.b64encode(b"us@er:p:ss").decode()
    assert t.host == "example.com"


def test_parse_http_url_quotes_unsafe_characters() -> None:
    t = parse_http_url("http://example.com/a b/é.mp4?q=a b")
    assert t.target == "/a%20b/%C3%A9.mp4?q=a%20b"


def test_parse_http_url_idna_host() -> None:
    assert parse_http_url("http://bücher.example/x").host == "xn--bcher-kva.example"


@pytest.mark.parametrize("url", [
    "ftp://example.com/x", "http:///x", "http://example.com:99999/x", "http://example.com:0/x", "http://[::1/x", "http://exa\nmple.com/x",
    "http://example.com/\x00",
])
def test_parse_http_url_refuses(url: str) -> None:
    with pytest.raises(PermanentError):
        parse_http_url(url)


def test_parse_http_url_errors_carry_no_secrets() -> None:
    with pytest.raises(PermanentError) as exc:
        parse_http_url("http://user:hunter2@example.com:99999/x?token=s3cret")
    assert "hunter2" not in str(exc.value) and "s3cret" not in str(exc.value)


@pytest.mark.parametrize("path, name", [
    ("/v/123.mp4", "source.mp4"),
    ("/v/123.MKV", "source.mkv"),
    ("/v/clip.tar.webm", "source.webm"),
    ("/v/noext", "source"),
    ("/", "source"),
    ("", "source"),
    ("/v/dir.d/", "source"),
    ("/v/x.toolong", "source"),
    ("/v/x.m$4", "source"),
    ("/v/x.mp4%00", "source"),
    ("/v/x.mp4%00.sh", "source.sh"),
    ("/v/x.", "source"),
    ("/v/x.../../etc", "source"),
    ("/v/.mp4", "source.mp4"),
    ("/v/.hidden", "source"),
    ("some/key/in/a/bucket.mov", "source.mov"),
])
def test_source_filename(path: str, name: str) -> None:
    assert source_filename(path) == name


def test_parse_s3_url_keeps_key_verbatim() -> None:
    assert parse_s3_url("s3://bucket/a/b c%20d?x#y.mp4") == ("bucket", "a/b c%20d?x#y.mp4")
    for bad in ("s3://bucket", "s3://bucket/", "s3:///key"):
        with pytest.raises(PermanentError):
            parse_s3_url(bad)


# -- statuses and errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("status", [200, 201, 203, 204, 299])
def test_2xx_is_ok(status: int) -> None:
    assert status_error(status, "http://h/x") is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 410, 416, 451, 499, 300, 304])
def test_permanent_statuses(status: int) -> None:
    err = status_error(status, "http://h/x")
    assert isinstance(err, PermanentError)
    assert str(status) in str(err) and "http://h/x" in str(err)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_transient_statuses(status: int) -> None:
    err = status_error(status, "http://h/x")
    assert isinstance(err, TransientError)
    assert str(status) in str(err)


def test_status_message_has_phrase() -> None:
    assert "Not Found" in str(status_error(404, "http://h/x"))


def test_dns_no_such_name_is_permanent_other_failures_transient() -> None:
    assert isinstance(dns_error(socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "h"), PermanentError)
    assert isinstance(dns_error(socket.gaierror(socket.EAI_AGAIN, "Temporary failure"), "h"), TransientError)
    assert isinstance(dns_error(socket.gaierror(socket.EAI_FAIL, "Non-recoverable"), "h"), TransientError)


def client_error(code: str, status: int, op: str = "GetObject") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, op)


@pytest.mark.parametrize("exc", [
    client_error("NoSuchKey", 404),
    client_error("404", 404, "HeadObject"),
    client_error("403", 403, "HeadObject"),
    client_error("AccessDenied", 403),
    client_error("NoSuchBucket", 404),
    client_error("400", 400, "HeadObject"),
    ParamValidationError(report="bad bucket"),
])
def test_s3_permanent_errors(exc: Exception) -> None:
    err = s3_error(exc, "s3://b/k")
    assert isinstance(err, PermanentError), err
    assert "s3://b/k" in str(err)


@pytest.mark.parametrize("exc", [
    client_error("InternalError", 500),
    client_error("503", 503, "HeadObject"),
    client_error("SlowDown", 503),
    client_error("RequestTimeout", 400),
    EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
    ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"),
    ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
    NoCredentialsError(),
    ConnectionResetError(104, "Connection reset by peer"),
])
def test_s3_transient_errors(exc: Exception) -> None:
    assert isinstance(s3_error(exc, "s3://b/k"), TransientError)


def test_s3_retries_exceeded_is_classified_by_its_last_error() -> None:
    from boto3.exceptions import RetriesExceededError

    assert isinstance(s3_error(RetriesExceededError(EndpointConnectionError(endpoint_url="x")), "s3://b/k"),
                      TransientError)
    assert isinstance(s3_error(RetriesExceededError(client_error("NoSuchKey", 404)), "s3://b/k"), PermanentError)


def test_s3_error_passes_clipper_errors_through() -> None:
    err = PermanentError("too big")
    assert s3_error(err, "s3://b/k") is err


# -- check_source_policy: what enqueue can refuse without a network -------------------------------

def _policy_settings(**kw):
    from clipper.settings import FetchSettings

    return FetchSettings(**kw)


@pytest.mark.parametrize("url,why", [
    ("http://169.254.169.254/latest", "link-local"),
    ("http://127.0.0.1:8080/v.mp4", "allow_private"),
    ("http://[::ffff:169.254.169.254]/x", "refused"),
    ("http://0xa9fea9fe/latest", "169.254.169.254 is link-local"),
    ("http://2130706433/v.mp4", "127.0.0.1 is loopback"),
    ("http://0/v.mp4", "0.0.0.0 is unspecified"),
    ("file:///etc/passwd", "allow_file_roots"),
    ("gopher://example.com/x", "not allowed"),
    ("s3://Bad_Bucket/key.mp4", "not a valid S3 bucket name"),
    ("s3://192.168.1.1/key.mp4", "not a valid S3 bucket name"),
    ("s3://a..b/key.mp4", "not a valid S3 bucket name"),
    ("s3://media/", "expected s3://bucket/key"),
    ("s3://other-bucket/k.mp4", "fetch.s3_allow_buckets"),
])
def test_check_source_policy_refuses(url: str, why: str) -> None:
    from clipper.jobs.fetch import check_source_policy

    with pytest.raises(PermanentError, match=re.escape(why)):
        check_source_policy(url, _policy_settings(s3_allow_buckets=("media",)))


@pytest.mark.parametrize("url", ["https://cdn.example.com/v.mp4", "http://8.8.8.8/v.mp4", "s3://media/a/b.mp4"])
def test_check_source_policy_allows(url: str) -> None:
    from clipper.jobs.fetch import check_source_policy

    check_source_policy(url, _policy_settings(s3_allow_buckets=("media",)))
    check_source_policy(url, _policy_settings())  # no bucket list: any bucket


def test_s3_endpoint_on_a_metadata_address_is_refused_even_though_settings_are_trusted() -> None:
    from clipper.jobs.fetch_s3 import check_s3_endpoint

    check_s3_endpoint("http://127.0.0.1:8333")  # a private object store is fine
    check_s3_endpoint(None)
    with pytest.raises(PermanentError, match="link-local"):
        check_s3_endpoint("http://169.254.169.254")


@pytest.mark.parametrize("host", ["2130706433", "0xa9fea9fe", "0", "0x7f.1", "0177.0.0.1", "127.1", "10.0x10",
                                  "1.2.3.4", "0x", "08", "1.2.3.4.5", "256.1.1.1", "4294967296", "0x_1", "1e3"])
def test_numeric_host_reads_numbers_as_the_resolver_does(host: str) -> None:
    """The policy judges the address getaddrinfo (and so wget, ffmpeg) would connect to."""
    import socket

    from clipper.addresses import numeric_host

    try:
        resolved = socket.getaddrinfo(host, 80, socket.AF_INET, flags=socket.AI_NUMERICHOST)[0][4][0]
    except socket.gaierror:
        resolved = None
    address = numeric_host(host)
    assert (str(address) if address is not None else None) == resolved
