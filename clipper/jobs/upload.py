"""Upload stage: put finished files at their keys, in a directory or an S3 bucket.

Keys are a pure function of the message, so a redelivered job overwrites the same objects;
but a job never overwrites another job's: `owner` reads which job wrote the manifest at a
prefix, and the pipeline refuses a prefix another job id owns. A directory upload is a write
to a temporary name and an atomic rename, so a reader never sees half a file. S3 credentials
come from the standard AWS chain, never from settings.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Protocol

from clipper.errors import OutputUnavailable, PermanentError
from clipper.settings import OutputSettings

CONTENT_TYPES = {
    "mp4": "video/mp4", "webm": "video/webm", "mkv": "video/x-matroska", "gif": "image/gif",
    "m4a": "audio/mp4", "mp3": "audio/mpeg", "jpg": "image/jpeg", "webp": "image/webp", "png": "image/png",
    "json": "application/json",
}


MANIFEST_READ_LIMIT = 1024 * 1024  # a manifest is a few KiB; whatever squats there is not read whole

# errors that say the key's path collides with what is there, not that the output is down
_KEY_CONFLICTS = frozenset({errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG})


def content_type_for(key: str) -> str:
    return CONTENT_TYPES.get(key.rsplit(".", 1)[-1].lower(), "application/octet-stream")


def manifest_owner(text: bytes) -> str:
    """The job id a manifest names; "" when the bytes are not a clipper manifest (pure)."""
    try:
        manifest = json.loads(text)
    except ValueError:
        return ""
    owner = manifest.get("id") if isinstance(manifest, dict) else None
    return owner if isinstance(owner, str) else ""


class Uploader(Protocol):
    def upload(self, path: Path, key: str, metadata: dict[str, str]) -> None:
        """Put the file at `key`; OutputUnavailable when the output cannot take it now."""

    def owner(self, manifest_key: str) -> str | None:
        """The job id of the manifest at `manifest_key`; "" when something else is there, None
        when nothing is; OutputUnavailable when the output cannot say now."""

    def check_writable(self) -> str | None:
        """None when the output takes a small write now, else a one-line reason (health checks)."""


class DirUploader:
    def __init__(self, root: Path, prefix: str = ""):
        self.root = root.resolve()
        self.jobs_root = self.root / prefix.strip("/")  # below it, paths come from messages

    def _target(self, key: str) -> Path:
        target = (self.root / key).resolve()
        if self.root not in target.parents:  # keys are validated upstream; this is the last fence
            raise PermanentError(f"output key {key!r} escapes output.dir")
        return target

    def owner(self, manifest_key: str) -> str | None:
        target = self._target(manifest_key)
        try:
            with open(target, "rb") as f:
                return manifest_owner(f.read(MANIFEST_READ_LIMIT))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except IsADirectoryError:
            return ""
        except OSError as exc:
            raise OutputUnavailable(f"reading {manifest_key}: {exc.strerror or exc}") from exc

    def upload(self, path: Path, key: str, metadata: dict[str, str]) -> None:
        target = self._target(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                    shutil.copyfileobj(src, out, 1024 * 1024)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, target)
                _fsync_dir(target.parent)  # the rename itself must survive a power loss
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            if exc.errno in _KEY_CONFLICTS and self.jobs_root.is_dir():
                # another output already holds this path as a file or a directory: the message's
                # keys, not the output, are the problem (retrying cannot help)
                raise PermanentError(f"upload of {key}: {exc.strerror or exc} (the key collides with another "
                                     "output's; choose another output_prefix or name)") from exc
            # a full disk, a read-only or unmounted volume, permissions: the output, not the job
            raise OutputUnavailable(f"upload of {key}: {exc.strerror or exc}") from exc

    def check_writable(self) -> str | None:
        """Write and remove a small file where jobs write (or, before the first job made it,
        in the root under which an upload creates it); nothing else is created."""
        if self.jobs_root.exists() and not self.jobs_root.is_dir():
            return f"output path {self.jobs_root} is not a directory"
        where = self.jobs_root if self.jobs_root.is_dir() else self.root
        if not where.is_dir():
            return f"output directory {where} does not exist"
        probe = where / f".clipper-check-{uuid.uuid4().hex[:8]}"
        try:
            probe.write_bytes(b"ok")
        except OSError as exc:
            return f"output directory {where} does not take a write: {exc.strerror or exc}"
        probe.unlink(missing_ok=True)
        return None


class S3Uploader:
    def __init__(self, output: OutputSettings, *, attempts: int = 3, connect_timeout: float = 5, read_timeout: float = 60):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = output.bucket or ""
        self.prefix = output.prefix.strip("/")
        self.endpoint = output.endpoint_url or "AWS S3"
        self.client = boto3.client(
            "s3", endpoint_url=output.endpoint_url, region_name=output.region,
            config=Config(retries={"max_attempts": attempts, "mode": "standard"}, connect_timeout=connect_timeout,
                          read_timeout=read_timeout),
        )
        # Multipart above 64 MiB, in 16 MiB parts: a failed part is retried alone.
        self.transfer = TransferConfig(multipart_threshold=64 * 1024**2, multipart_chunksize=16 * 1024**2,
                                       max_concurrency=4, use_threads=True)

    def upload(self, path: Path, key: str, metadata: dict[str, str]) -> None:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.upload_file(str(path), self.bucket, key, Config=self.transfer,
                                    ExtraArgs={"ContentType": content_type_for(key), "Metadata": metadata})
        except (ClientError, S3UploadFailedError, BotoCoreError) as exc:
            # Unreachable, 5xx, throttled, but also access denied or a missing bucket: a problem
            # of the deployment, never of the message, so the job waits for the output (and
            # ops) instead of using up its attempts and being dead-lettered.
            raise OutputUnavailable(f"upload to s3://{self.bucket}/{key} failed: {exc}") from exc

    def owner(self, manifest_key: str) -> str | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=manifest_key, Range=f"bytes=0-{MANIFEST_READ_LIMIT - 1}")
            return manifest_owner(obj["Body"].read())
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            if code == "InvalidRange":  # an empty object: not a manifest
                return ""
            raise OutputUnavailable(f"reading s3://{self.bucket}/{manifest_key} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise OutputUnavailable(f"reading s3://{self.bucket}/{manifest_key} failed: {exc}") from exc


    def check_writable(self) -> str | None:
        """Put a small object under the prefix (one per host, overwritten each time) and
        remove it; the reason names what ops must fix: credentials, route, bucket, policy."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        key = f"{self.prefix}/.clipper-check/{socket.gethostname()}".lstrip("/")
        where = f"output s3://{self.bucket} at {self.endpoint}"
        try:
            # HEAD first: some stores (SeaweedFS) create a missing bucket on the first write
            self.client.head_bucket(Bucket=self.bucket)
            self.client.put_object(Bucket=self.bucket, Key=key, Body=b"ok")
        except NoCredentialsError:
            return f"{where}: no AWS credentials found (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or a role)"
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket"):
                return f"{where}: the bucket does not exist"
            return f"{where}: access refused ({code or exc}): check the credentials and the bucket policy"
        except BotoCoreError as exc:
            return f"{where}: unreachable ({exc})"
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError):
            pass  # a write-only policy may not allow deletes; the write is what counts
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_uploader(output: OutputSettings, *, quick: bool = False) -> Uploader:
    """`quick`: one attempt and short timeouts, for a health check that must answer in seconds."""
    if output.kind == "dir":
        return DirUploader(output.dir, output.prefix)
    return S3Uploader(output, attempts=1, connect_timeout=3, read_timeout=10) if quick else S3Uploader(output)
