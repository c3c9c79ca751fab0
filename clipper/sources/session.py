"""A job's source, opened once: what ffmpeg reads (`input`), its probe, what it cost.

`SourceCache` is the daemon's view of `cache.dir` (areas, counters, failure cache), made once
per daemon. `open_source` gives a job a `SourceSession`:

- `file://` under `fetch.allow_file_roots`: read in place (no copy); its probe is remembered
  in memory by the file's identity (`LocalProbes`), so jobs on one file probe it once.
- http(s) and s3: the version is fixed by the opening request (origin.py), the entry of that version
  is leased (store.py), and a loopback endpoint (endpoint.py) serves it to ffmpeg, fetching
  missing blocks with closed ranges (blocks.py). Opening a URL is done by one job at a time
  (`urls/<digest>.lock`), so jobs that start together on one source ask the origin once; the
  URL's last version is remembered (`urls/<digest>.json`) for the next job's conditional
  request. A version without ETag or Last-Modified is never shared: its entry is the job's
  own and goes when the job ends.
- a remembered permanent failure (failures.py) fails the job before any request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from clipper.errors import ClipperError, PermanentError
from clipper.jobs.fetch import check_source_policy, fetch_source, source_filename
from clipper.jobs.probe import MediaInfo, probe_json, source_media_info
from clipper.jobs.spec import redact_url
from clipper.media.command import SOURCE_FORMAT_WHITELIST, JobControl
from clipper.settings import Settings
from clipper.sources.blocks import BlockSource
from clipper.sources.endpoint import EndpointServer, LocalEndpoint
from clipper.sources.failures import FailureCache
from clipper.sources.origin import HttpOrigin, Opened, SourceRefused, Version
from clipper.sources.origin_s3 import S3Origin
from clipper.sources.store import Area, Counters, Lease, file_lock, read_json, wait_check, write_atomic

PROBE_WHAT = "probe of the source"
Origin = HttpOrigin | S3Origin


class SourceCache:
    """`cache.dir` for one daemon (module doc)."""

    def __init__(self, settings: Settings):
        cache = settings.cache
        self.settings = settings
        self.root = Path(cache.dir)
        self.counters = Counters(self.root)
        self.sources = Area(self.root / "sources", cache.max_bytes, cache.ttl, self.counters)
        self.outputs = Area(self.root / "outputs", cache.output_max_bytes, cache.ttl, self.counters)
        self.failures = FailureCache(self.root / "failures", cache.failure_ttl, self.counters)
        self.urls = self.root / "urls"
        self.local_probes = LocalProbes()
        self.endpoints = EndpointServer()  # the loopback server ffmpeg reads remote sources from
        for d in (self.root, self.urls, self.sources.root, self.outputs.root):
            d.mkdir(parents=True, exist_ok=True)
        self.sources.companions = [self.urls, self.failures.root]

    def close(self) -> None:
        """Stop the loopback server (the daemon's end; a job's session only drops its path)."""
        self.endpoints.close()

    def summary(self) -> dict[str, Any]:
        """What `clipper stats` shows of the cache."""
        sources, outputs = self.sources.entries(), self.outputs.entries()
        return {"dir": str(self.root), "entries": len(sources), "bytes": sum(e[1] for e in sources),
                "budget": self.sources.budget, "output_entries": len(outputs),
                "output_bytes": sum(e[1] for e in outputs), "output_budget": self.outputs.budget,
                **self.counters.read()}


class LocalProbes:
    """The probes of local (`file://`) sources, in memory, by what identifies a file's content
    without reading it: (path, device, inode, size, mtime, ctime), least recently used dropped.
    A file changed less than RACY_SECONDS ago is not remembered (a rewrite within the clock's
    granularity could keep every field: git's "racy" rule), nor one that changed while it was
    probed. Replacing a file by rename gives a new inode; writing into it moves mtime and ctime."""

    RACY_SECONDS = 2.0
    ENTRIES = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._probes: OrderedDict[tuple[Any, ...], dict[str, Any]] = OrderedDict()

    def identity(self, path: Path) -> tuple[Any, ...] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < self.RACY_SECONDS * 1e9:
            return None
        return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def get(self, identity: tuple[Any, ...]) -> dict[str, Any] | None:
        with self._lock:
            data = self._probes.get(identity)
            if data is not None:
                self._probes.move_to_end(identity)
            return data

    def put(self, identity: tuple[Any, ...], path: Path, data: dict[str, Any]) -> None:
        if self.identity(path) != identity:
            return  # changed while ffprobe read it
        with self._lock:
            self._probes[identity] = data
            while len(self._probes) > self.ENTRIES:
                self._probes.popitem(last=False)


def url_identity(url: str) -> str:
    """Digest of the URL without its credentials (the query stays: it may name the object)."""
    parts = urlsplit(url)
    bare = urlunsplit((parts.scheme.lower(), parts.netloc.rpartition("@")[2].lower(), parts.path, parts.query, ""))
    return hashlib.sha256(bare.encode("utf-8", "surrogatepass")).hexdigest()


class SourceSession:
    """One job's source (module doc); `close` ends the endpoint, the lease and the connections."""

    def __init__(self, cache: SourceCache, url: str, input_: Path | str, *, blocks: BlockSource | None = None,
                 lease: Lease | None = None, origin: Origin | None = None, version_key: str | None = None,
                 local_bytes: int = 0, private: bool = False):
        self.cache, self.url, self.input = cache, url, input_
        self.blocks, self.lease, self.origin = blocks, lease, origin
        self.version_key = version_key  # None: outputs of this source are not reusable
        self.local_bytes = local_bytes
        self.private = private
        self.endpoint: LocalEndpoint | None = None

    def probe(self, control: JobControl, max_pixels: int = 0) -> MediaInfo:
        """The source's MediaInfo; its probe JSON is kept with a cached version and reused.
        `max_pixels`: ffprobe refuses a larger picture instead of decoding it (media limits)."""
        cached = self.lease.dir / "probe.json" if self.lease is not None and not self.private else None
        data = read_json(cached) if cached is not None else None
        local = self.cache.local_probes.identity(Path(self.input)) if self.blocks is None else None
        if local is not None:
            data = self.cache.local_probes.get(local)
        reason = ""
        if data is None:
            data, reason = probe_json(self.input, SOURCE_FORMAT_WHITELIST, what=PROBE_WHAT, control=control,
                                      max_pixels=max_pixels)
            self.raise_origin_error()
            if data is not None and local is not None:
                self.cache.local_probes.put(local, Path(self.input), data)
        try:
            info = source_media_info(data, reason, PROBE_WHAT)
        except PermanentError as exc:
            if self.blocks is not None:  # a remote source; a local file is looked at again each time
                self.cache.failures.remember(self.url, str(exc))
            raise
        if cached is not None and not cached.exists():
            write_atomic(cached, json.dumps(data).encode())
        return info

    def raise_origin_error(self) -> None:
        """When the origin failed under ffmpeg, that failure (e.g. transient) explains the job's
        failure better than ffmpeg's read error; raise it."""
        if self.blocks is not None and self.blocks.error is not None:
            raise self.blocks.error

    def stats(self) -> dict[str, int]:
        if self.blocks is None:
            return {"bytes_from_origin": 0, "bytes_from_cache": 0, "bytes_local": self.local_bytes}
        return {"bytes_from_origin": self.origin.bytes if self.origin else self.blocks.stats.origin_bytes,
                "bytes_from_cache": self.blocks.stats.cache_bytes}

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
        if self.origin is not None:
            self.origin.close()
        if self.blocks is not None:
            s = self.blocks.stats
            self.cache.counters.add(hits=s.hits, misses=s.misses, coalesced_waits=s.coalesced_waits)
        if self.lease is not None:
            self.lease.release()
            if self.private:
                self.cache.sources.remove_unused(self.lease.dir)


def open_source(url: str, cache: SourceCache, workdir: Path, control: JobControl) -> SourceSession:
    """The job's source, ready to be read (module doc). Raises PermanentError (forbidden URL,
    4xx, too large; a remembered failure with "(cached)"), TransientError or Cancelled."""
    settings = cache.settings
    check_source_policy(url, settings.fetch)
    scheme = urlsplit(url).scheme.lower()
    cache.failures.check(url)
    if scheme == "file":
        fetched = fetch_source(url, workdir, settings.fetch, control=control)
        return SourceSession(cache, url, fetched.path, local_bytes=fetched.bytes)
    origin: Origin = S3Origin(url, settings.fetch, control) if scheme == "s3" else HttpOrigin(url, settings.fetch,
                                                                                              control)
    # the same s3:// URL names another object on another endpoint
    identity = url_identity(url + (f"@{settings.fetch.s3_endpoint_url}" if scheme == "s3" else ""))
    try:
        session = _open_remote(url, identity, cache, origin, control)
    except SourceRefused as exc:
        origin.close()
        cache.failures.remember(url, str(exc))
        raise
    except BaseException:
        origin.close()
        raise
    name = source_filename(urlsplit(url).path)
    assert session.blocks is not None
    try:
        session.endpoint = cache.endpoints.serve(session.blocks, name)
    except BaseException:
        session.close()
        raise
    session.input = session.endpoint.url
    return session


def _open_remote(url: str, identity: str, cache: SourceCache, origin: Origin,
                 control: JobControl) -> SourceSession:
    settings = cache.settings
    where = redact_url(url)
    block_size = settings.cache.block_size
    check = wait_check(control, f"source {where}")
    with file_lock(cache.urls / f"{identity}.lock", check=check) as fd:
        os.utime(fd)  # in use: not swept as stale (store.py)
        known_data = read_json(cache.urls / f"{identity}.json")
        known = Version(**known_data) if known_data else None
        opened = origin.open(block_size, known)
        version = opened.version
        try:
            if version.size is not None and version.size > settings.fetch.max_bytes:
                raise PermanentError(f"source {where}: {version.size} bytes exceeds fetch.max_bytes "
                                     f"{settings.fetch.max_bytes}")
            return _lease_version(url, cache, origin, opened, identity, control)
        except BaseException:
            opened.discard()
            raise


def _lease_version(url: str, cache: SourceCache, origin: Origin, opened: Opened, identity: str,
                   control: JobControl) -> SourceSession:
    settings = cache.settings
    version = opened.version
    block_size = settings.cache.block_size
    private = version.validator is None or (opened.status == 200 and version.size is None)
    if private:
        key = f"private-{secrets.token_hex(16)}"
    else:
        key = hashlib.sha256(f"{identity}|{version.validator}|{block_size}".encode()).hexdigest()
    lease = cache.sources.lease(key, wait_check(control, f"source {redact_url(url)}"))
    try:
        meta = lease.dir / "meta.json"
        if not meta.exists():
            write_atomic(meta, json.dumps({"url": redact_url(url), "ranges": opened.status != 200,
                                           **dataclasses.asdict(version)}).encode())
        sized = version if version.size is not None else dataclasses.replace(version, size=0)
        blocks = BlockSource(lease, cache.sources, sized, block_size, origin, control, redact_url(url))
        if opened.status == 206:
            blocks.put_first(b"".join(opened.chunks))
        elif opened.status == 200:
            _take_whole(blocks, opened, settings.fetch.max_bytes)
        if not private:
            write_atomic(cache.urls / f"{identity}.json", json.dumps(dataclasses.asdict(version)).encode())
        return SourceSession(cache, url, "", blocks=blocks, lease=lease, origin=origin,
                             version_key=None if private else key, private=private)
    except BaseException:
        lease.release()
        raise


def _take_whole(blocks: BlockSource, opened: Opened, max_bytes: int) -> None:
    """An origin that ignored Range: keep the whole body in the entry (once: a later job on
    the same version finds it complete and drops its body unread); no more origin reads."""
    if opened.version.size is not None and blocks.complete():
        opened.discard()
    else:
        blocks.fill(opened.chunks, max_bytes, opened.version.size)
    blocks.origin = None


def explain_failure(session: SourceSession | None, exc: ClipperError) -> ClipperError:
    """The origin's failure, when there was one, else `exc` itself."""
    if session is not None and session.blocks is not None and session.blocks.error is not None:
        return session.blocks.error
    return exc
