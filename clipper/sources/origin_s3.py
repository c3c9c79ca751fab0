"""Byte ranges of an `s3://bucket/key` source: ranged GetObject, the same contract as
origin.HttpOrigin (`open` fixes the version, `read` asks for closed ranges of exactly it).

The endpoint, bucket and key rules are fetch_s3.py's (endpoint checked against the address
policy, `fetch.s3_allow_buckets`); errors are classified by its `s3_error`. A missing or
forbidden object is remembered by the failure cache like an http 404/403. The conditional
open sends `IfNoneMatch` with the ETag the cache knows; S3 answers 304 without a body.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from clipper.errors import Cancelled, ClipperError, PermanentError, TransientError
from clipper.jobs.fetch_s3 import check_s3_endpoint, parse_s3_url, s3_client, s3_error
from clipper.jobs.spec import redact_url
from clipper.media.command import JobControl
from clipper.settings import FetchSettings
from clipper.sources.origin import READ_CHUNK, Opened, SourceRefused, Version, parse_content_range


def _status(exc: BaseException) -> int:
    response = getattr(exc, "response", None) or {}
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    code = str(response.get("Error", {}).get("Code", ""))
    return status or (int(code) if code.isdigit() else 0)


class S3Origin:
    """Range reads of one S3 object for one job (module doc)."""

    def __init__(self, url: str, settings: FetchSettings, control: JobControl):
        self.where = redact_url(url)
        self.bucket, self.key = parse_s3_url(url)
        self.control = control
        self.bytes = 0
        self._lock = threading.Lock()
        check_s3_endpoint(settings.s3_endpoint_url)
        self._client: Any = s3_client(settings)

    def _check(self) -> None:
        if self.control.is_cancelled():
            raise Cancelled(f"fetch of {self.where} cancelled")

    def _get(self, first: int, last: int, **conditions: str) -> dict[str, Any]:
        self._check()
        try:
            return self._client.get_object(Bucket=self.bucket, Key=self.key, Range=f"bytes={first}-{last}", **conditions)
        except Exception as exc:
            status = _status(exc)
            if status == 304:
                return {"NotModified": True}
            if status == 412:
                raise TransientError(f"source {self.where}: changed while being read; the retry reads it again") from None
            if status == 416:
                raise SourceRefused(f"source {self.where}: empty object (no byte 0)") from None
            error: ClipperError = s3_error(exc, self.where)
            if isinstance(error, PermanentError) and status in (401, 403, 404, 410):
                raise SourceRefused(str(error)) from None
            raise error from None

    def _chunks(self, reply: dict[str, Any]) -> Iterator[bytes]:
        body = reply["Body"]
        try:
            while True:
                self._check()
                try:
                    chunk = body.read(READ_CHUNK)
                except Exception as exc:
                    raise TransientError(f"source {self.where}: S3 read failed ({type(exc).__name__})") from None
                if not chunk:
                    return
                with self._lock:
                    self.bytes += len(chunk)
                yield chunk
        finally:
            body.close()

    def _version(self, reply: dict[str, Any]) -> Version:
        parsed = parse_content_range(reply.get("ContentRange"))
        size = parsed[2] if parsed else reply.get("ContentLength")
        modified = reply.get("LastModified")
        return Version(size, reply.get("ETag"), modified.isoformat() if modified is not None else None,
                       reply.get("ContentType"))

    def open(self, length: int, known: Version | None) -> Opened:
        conditions = {"IfNoneMatch": known.etag} if known is not None and known.etag else {}
        reply = self._get(0, length - 1, **conditions)
        if reply.get("NotModified") and known is not None:
            return Opened(304, known, iter(()))
        drop: Callable[[], None] = reply["Body"].close
        return Opened(206, self._version(reply), self._chunks(reply), drop)

    def read(self, start: int, end: int, version: Version) -> bytes:
        reply = self._get(start, end, **({"IfMatch": version.etag} if version.etag else {}))
        if not self._version(reply).same_as(version):
            reply["Body"].close()
            raise TransientError(f"source {self.where}: changed while being read; the retry reads it again")
        data = b"".join(self._chunks(reply))
        if len(data) != end - start + 1:
            raise TransientError(f"source {self.where}: short range, got {len(data)} of {end - start + 1} bytes")
        return data

    def close(self) -> None:
        self._client.close()
