"""One version of one remote source, read block by block through the cache.

The entry `sources/<key>/` of a version holds `meta.json` (what the version is), `probe.json`
(its ffprobe, see session.py) and `blocks/<n>`: byte n*block_size .. of the source, exactly
`block_size` long (the last block: the rest). A block file is complete or absent (written
atomically, store.py); one also checked for its exact length before it is served.

A block missing from the cache is fetched by exactly one job at a time: the reader takes the
block's flock (`blocks/<n>.lock`), looks again (another thread or daemon may have fetched it
while it waited: a coalesced wait), and only then asks the origin for that closed range.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Protocol

from clipper.errors import ClipperError, PermanentError, TransientError
from clipper.media.command import JobControl
from clipper.sources.origin import Version
from clipper.sources.store import Area, Lease, file_lock, try_file_lock, wait_check, write_atomic


class RangeOrigin(Protocol):
    bytes: int

    def read(self, start: int, end: int, version: Version) -> bytes: ...


@dataclass
class ReadStats:
    """What one job's reads of its source cost."""

    origin_bytes: int = 0
    cache_bytes: int = 0
    hits: int = 0
    misses: int = 0
    coalesced_waits: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for key, value in deltas.items():
                setattr(self, key, getattr(self, key) + value)


class BlockSource:
    """Blocks of one cached version (module doc); `error` keeps the first origin failure, which
    explains an ffmpeg that then failed to read."""

    def __init__(self, lease: Lease, area: Area, version: Version, block_size: int, origin: RangeOrigin | None,
                 control: JobControl, where: str):
        assert version.size is not None
        self.dir = lease.dir / "blocks"
        self.dir.mkdir(exist_ok=True)
        self.area = area
        self.version = version
        self.size: int = version.size
        self.block_size = block_size
        self.origin = origin
        self.where = where
        self.stats = ReadStats()
        self.error: ClipperError | None = None
        self._check = wait_check(control, f"source {where}")

    def span(self, index: int) -> tuple[int, int]:
        """First and last byte (inclusive) of block `index`."""
        start = index * self.block_size
        return start, min(self.size, start + self.block_size) - 1

    def _cached(self, index: int) -> bytes | None:
        start, end = self.span(index)
        try:
            data = (self.dir / str(index)).read_bytes()
        except OSError:
            return None
        return data if len(data) == end - start + 1 else None

    def block(self, index: int, ahead: int = 0) -> bytes:
        """Block `index`; when it must be fetched, up to `ahead` following blocks that are
        neither cached nor being fetched by another job come in the same request."""
        try:
            return self._block(index, ahead)
        except ClipperError as exc:
            if self.error is None:
                self.error = exc
            raise

    def _block(self, index: int, ahead: int) -> bytes:
        data = self._cached(index)
        if data is not None:
            self.stats.add(hits=1, cache_bytes=len(data))
            return data
        waited: list[bool] = []
        with ExitStack() as locks:
            locks.enter_context(file_lock(self.dir / f"{index}.lock", check=self._check, waited=waited))
            data = self._cached(index)
            if data is not None:
                self.stats.add(hits=1, cache_bytes=len(data), coalesced_waits=1 if waited else 0)
                return data
            if self.origin is None:
                raise TransientError(f"source {self.where}: cached copy lost block {index}; the retry fetches it again")
            last = index
            while last - index < ahead and last + 1 < self.blocks() and self._cached(last + 1) is None:
                lock = try_file_lock(self.dir / f"{last + 1}.lock")
                if lock is None:
                    break  # another job fetches it
                locks.callback(os.close, lock)
                last += 1
            run = self.origin.read(self.span(index)[0], self.span(last)[1], self.version)
            for i in range(index, last + 1):
                start, end = self.span(i)
                self.store(i, run[start - self.span(index)[0]:end - self.span(index)[0] + 1])
            self.stats.add(misses=last - index + 1, origin_bytes=len(run))
            return run[:self.span(index)[1] - self.span(index)[0] + 1]

    def store(self, index: int, data: bytes) -> None:
        write_atomic(self.dir / str(index), data)
        self.area.wrote(len(data))

    def put_first(self, data: bytes) -> None:
        """Block 0 as the opening request brought it (counted as fetched from the origin)."""
        if len(data) != self.span(0)[1] + 1:
            raise TransientError(f"source {self.where}: first block short ({len(data)} bytes)")
        if self._cached(0) is None:
            self.store(0, data)
        self.stats.add(misses=1, origin_bytes=len(data))

    def fill(self, chunks: Iterator[bytes], max_bytes: int, expected: int | None) -> None:
        """The whole body of an origin that ignored Range (or sent no length), cut into blocks as
        it streams in; `expected`: the announced length, if any."""
        buffer = bytearray()
        index = received = 0
        for chunk in chunks:
            received += len(chunk)
            if received > max_bytes:
                raise PermanentError(f"source {self.where}: body exceeds fetch.max_bytes {max_bytes}")
            buffer += chunk
            while len(buffer) >= self.block_size:
                self.store(index, bytes(buffer[:self.block_size]))
                del buffer[:self.block_size]
                index += 1
        if buffer:
            self.store(index, bytes(buffer))
        if expected is not None and received != expected:
            raise TransientError(f"source {self.where}: truncated body, got {received} of {expected} bytes")
        if received == 0:
            raise PermanentError(f"source {self.where}: empty file")
        self.size = received
        self.stats.add(misses=index + (1 if buffer else 0), origin_bytes=received)

    def complete(self) -> bool:
        return all(self._cached(i) is not None for i in range(self.blocks()))

    def blocks(self) -> int:
        return max(1, -(-self.size // self.block_size))
