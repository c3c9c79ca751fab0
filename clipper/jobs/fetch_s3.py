"""`s3://bucket/key` sources: read with boto3 from `fetch.s3_endpoint_url` (credentials from the
standard AWS chain). Only `fetch.py` calls this module; it hands over where to write, a
`check` that raises when the job is cancelled or past `fetch.timeout`, and a progress callback.

The endpoint comes from settings, which are trusted, and a deployment may well run its object
store on a private address; it is still refused when it resolves to a link-local (metadata),
multicast or reserved address. The message only chooses the bucket and key: bucket names must
be DNS-compatible (with virtual-hosted addressing they become part of the host name), and
`fetch.s3_allow_buckets`, when set, lists the buckets producers may name.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from clipper.addresses import check_address, is_ip_literal
from clipper.errors import Cancelled, ClipperError, PermanentError, TransientError
from clipper.jobs.spec import redact_url
from clipper.settings import FetchSettings

PROGRESS_EVERY = 0.5  # seconds between progress callbacks

# DNS-compatible bucket names only: with virtual-hosted addressing the bucket becomes part of
# the endpoint's host name, so nothing else may reach it (no IP-like names, no "..").
S3_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$|^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key); the key is taken verbatim (no unquoting; `?` and `#`
    are part of it), as the AWS CLI does."""
    rest = url.split("://", 1)[1] if "://" in url else ""
    bucket, _, key = rest.partition("/")
    if not bucket or not key:
        raise PermanentError(f"source {redact_url(url)}: expected s3://bucket/key")
    if not S3_BUCKET_RE.match(bucket) or ".." in bucket or is_ip_literal(bucket):
        raise PermanentError(f"source {redact_url(url)}: {bucket[:70]!r} is not a valid S3 bucket name")
    return bucket, key


def check_s3_endpoint(endpoint_url: str | None) -> None:
    """The object store comes from settings (trusted, often on a private address), but it must
    never be a link-local/metadata, multicast or reserved address: refused whatever
    `fetch.allow_private` says (an endpoint typo must not turn into SSRF)."""
    if not endpoint_url:
        return
    host = urlsplit(endpoint_url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise TransientError(f"fetch.s3_endpoint_url {redact_url(endpoint_url)}: cannot resolve {host!r} ({exc})") from None
    for info in infos:
        reason = check_address(ipaddress.ip_address(info[4][0].split("%")[0]), allow_private=True)
        if reason is not None:
            raise PermanentError(f"fetch.s3_endpoint_url {redact_url(endpoint_url)} is refused: {reason}")


def s3_error(exc: BaseException, where: str) -> ClipperError:
    """Classify a boto3/botocore failure: missing or forbidden objects are permanent; the
    endpoint being unreachable, slow or failing (5xx, throttling) is transient."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ParamValidationError

    if isinstance(exc, ClipperError):
        return exc
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {}) or {}
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if not status and code.isdigit():
            status = int(code)
        # a HEAD has no body, so a missing object comes back as a bare "404": say what it means
        meaning = {404: "no such object (or bucket)", 403: "access denied"}.get(status)
        name = code if code and not code.isdigit() else "error"
        text = f"source {where}: S3 {meaning or name}" + (f" ({code})" if meaning and name != "error" else "") \
            + (f" (HTTP {status})" if status else "")
        if code in ("SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                    "ServiceUnavailable", "RequestTimeTooSkewed") or status in (408, 429) or status >= 500:
            return TransientError(text)
        if code in ("NoSuchKey", "NoSuchBucket", "AccessDenied", "InvalidObjectState", "InvalidBucketName") \
                or 300 <= status < 500:
            return PermanentError(text)
        return TransientError(text)
    if isinstance(exc, NoCredentialsError):
        # the daemon's environment, not the message, is wrong; an operator can fix it in time
        return TransientError(f"source {where}: no AWS credentials for s3:// sources (standard AWS chain)")
    if isinstance(exc, ParamValidationError):
        return PermanentError(f"source {where}: invalid S3 bucket or key")
    last = getattr(exc, "last_exception", None)  # boto3's RetriesExceededError
    if last is not None and last is not exc:
        return s3_error(last, where)
    if isinstance(exc, (BotoCoreError, OSError)):
        return TransientError(f"source {where}: S3 endpoint unavailable ({type(exc).__name__})")
    return TransientError(f"source {where}: S3 download failed ({type(exc).__name__})")


def fetch_s3(url: str, path: Path, settings: FetchSettings, *, check: Callable[[], None],
             progress: Callable[[int], None] | None) -> tuple[int, str | None]:
    """Download the object to `path`; returns (bytes, content type). `check` raises Cancelled
    or the fetch.timeout error; it is called between the steps and on every received chunk."""
    import boto3
    from botocore.config import Config

    where = redact_url(url)
    bucket, key = parse_s3_url(url)
    check_s3_endpoint(settings.s3_endpoint_url)
    received = 0
    last_progress = time.monotonic()
    lock = threading.Lock()

    def on_bytes(n: int) -> None:  # s3transfer calls this from its threads; raising aborts the transfer
        nonlocal received, last_progress
        with lock:
            received += n
            so_far = received
            report = time.monotonic() - last_progress >= PROGRESS_EVERY
            if report:
                last_progress = time.monotonic()
        check()
        if so_far > settings.max_bytes:
            raise PermanentError(f"source {where}: body exceeds fetch.max_bytes {settings.max_bytes}")
        if progress is not None and report:
            progress(so_far)

    try:
        client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
                              config=Config(connect_timeout=settings.connect_timeout,
                                            read_timeout=settings.connect_timeout, retries={"max_attempts": 2}))
        head = client.head_object(Bucket=bucket, Key=key)
        size = int(head.get("ContentLength") or 0)
        if size > settings.max_bytes:
            raise PermanentError(f"source {where}: object is {size} bytes, exceeds fetch.max_bytes {settings.max_bytes}")
        check()
        client.download_file(bucket, key, str(path), Callback=on_bytes)
        check()
    except Cancelled:
        path.unlink(missing_ok=True)
        raise
    except BaseException as exc:
        path.unlink(missing_ok=True)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise s3_error(exc, where) from None
    got = path.stat().st_size
    if progress is not None:
        progress(got)
    content_type = head.get("ContentType")
    return got, str(content_type)[:200] if content_type else None
