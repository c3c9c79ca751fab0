"""The cache directory on disk: entries under a byte budget, shared by threads and daemons.

An area (`sources/`, `outputs/`) holds entries `<area>/<key[:2]>/<key>/`. Rules that make it
crash-safe and shareable:

- Every file is written under a temporary name and renamed into place (`write_atomic`), so a
  file under its final name is always complete; kill -9 leaves at most a `*.tmp.*` file, which
  no reader looks at; it counts against the budget and goes with its entry.
- A job using an entry holds a shared `flock` on the entry's `.lock` for as long as it reads
  it (`Lease`); eviction takes that lock exclusively without waiting, so an entry in use is
  never evicted. Evicting renames the entry away first (one atomic step), then deletes it.
- Threads and processes coordinate with `flock` on small lock files (an `flock` belongs to an
  open file description, so two threads of one daemon exclude each other as two daemons do);
  waits poll, so a cancelled job stops waiting within POLL seconds.
- Budget: a scan sums the entries' files; when the area is over 7/8 of its budget, the least
  recently used entries not in use are evicted down to 3/4 (and entries unused for longer than
  `cache.ttl` go too). Each daemon scans again after every 1/16 of the budget it writes, so the
  area stays under its budget while jobs run, except for entries that running jobs hold.
- Small companion directories (the URL index, the failure cache) are swept of files unused for
  `cache.ttl` during the same scans, and so is what an eviction cut short by a crash left.
- Counters (hits, misses, evictions, ...) live in `stats.json` at the cache root, updated
  under its lock, so `clipper stats` sees the sum over every daemon sharing the directory.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clipper.errors import Cancelled
from clipper.media.command import JobControl

POLL = 0.02  # seconds between attempts at a lock another job holds
COUNTERS = ("hits", "misses", "evictions", "coalesced_waits", "failure_hits", "output_reuses")


def write_atomic(path: Path, data: bytes) -> None:
    """`data` under `path`, all or nothing: a temporary name in the same directory, then rename."""
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextmanager
def file_lock(path: Path, *, exclusive: bool = True, check: Callable[[], None] | None = None,
              waited: list[bool] | None = None) -> Iterator[int]:
    """Hold an flock on `path` (created if missing); polls, calling `check` (which raises on
    cancel) between attempts; appends True to `waited` when it had to wait."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        while True:
            try:
                fcntl.flock(fd, mode)
                break
            except BlockingIOError:
                if waited is not None and not waited:
                    waited.append(True)
                if check is not None:
                    check()
                time.sleep(POLL)
        yield fd
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def try_file_lock(path: Path) -> int | None:
    """An exclusive flock on `path` without waiting: its descriptor (close it to release), or None."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class Counters:
    """Cache counters persisted at the cache root (module doc)."""

    def __init__(self, root: Path):
        self.path = root / "stats.json"
        self.lock = root / "stats.lock"

    def add(self, **deltas: int) -> None:
        deltas = {k: v for k, v in deltas.items() if v}
        if not deltas:
            return
        with file_lock(self.lock):
            current = self.read()
            for key, value in deltas.items():
                current[key] = current.get(key, 0) + value
            write_atomic(self.path, json.dumps(current).encode())

    def read(self) -> dict[str, int]:
        data = read_json(self.path) or {}
        return {k: int(data.get(k, 0)) for k in COUNTERS}


class Lease:
    """A shared lock on one entry while a job uses it; `release` ends it."""

    def __init__(self, directory: Path, fd: int):
        self.dir = directory
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Area:
    """Entries of one kind under one byte budget (module doc)."""

    def __init__(self, root: Path, budget: int, ttl: float, counters: Counters):
        self.root = root
        self.budget = budget
        self.ttl = ttl
        self.counters = counters
        self.companions: list[Path] = []  # flat directories swept of stale files (module doc)
        self._written = 0
        self._lock = threading.Lock()

    def entry_dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def lease(self, key: str, check: Callable[[], None] | None = None) -> Lease:
        """The entry (created when missing) under a shared lock; retried when an eviction
        renamed it away between our open and our lock."""
        directory = self.entry_dir(key)
        while True:
            directory.mkdir(parents=True, exist_ok=True)
            lock = directory / ".lock"
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:
                continue  # renamed away just now
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:  # an eviction holds it for a moment
                        if check is not None:
                            check()
                        time.sleep(POLL)
                if os.path.exists(lock) and os.stat(lock).st_ino == os.fstat(fd).st_ino:
                    os.utime(lock)  # last use, for LRU
                    return Lease(directory, fd)
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def wrote(self, n: int) -> None:
        """Account `n` bytes written into the area; scan and evict after every 1/16 budget."""
        with self._lock:
            self._written += n
            due = self._written >= max(1, self.budget // 16)
            if due:
                self._written = 0
        if due:
            self.enforce_budget()

    def entries(self) -> list[tuple[Path, int, float]]:
        """(directory, bytes, last use) of every entry."""
        found = []
        for shard in _listdir(self.root):
            for entry in _listdir(shard):
                if not entry.name.startswith(".") and entry.is_dir():
                    found.append((entry, _tree_bytes(entry), _mtime(entry / ".lock")))
        return found

    def enforce_budget(self) -> None:
        """Evict what is expired, then LRU entries not in use, when over 7/8 of the budget."""
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.root / ".evict.lock", "a+") as guard:
                try:
                    fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return  # another thread or daemon is at it
                self._evict()
        except OSError:
            return

    def _evict(self) -> None:
        now = time.time()
        for stale in [*_listdir(self.root / ".trash"), *(f for d in self.companions for f in _listdir(d))]:
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            elif now - _mtime(stale) > self.ttl:
                stale.unlink(missing_ok=True)
        entries = sorted(self.entries(), key=lambda e: e[2])
        total = sum(size for _, size, _ in entries)
        target = self.budget * 3 // 4 if total > self.budget * 7 // 8 else None
        evicted = 0
        for directory, size, used in entries:  # least recently used first, so the expired come first
            if not (now - used > self.ttl or (target is not None and total > target)):
                break
            if self.remove_unused(directory):
                total -= size
                evicted += 1
        self.counters.add(evictions=evicted)

    def remove_unused(self, directory: Path) -> bool:
        """Delete an entry nobody holds (renamed away first, so it vanishes in one step)."""
        try:
            fd = os.open(directory / ".lock", os.O_RDWR)
        except OSError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a job reads it
            trash = self.root / ".trash" / secrets.token_hex(8)
            trash.parent.mkdir(exist_ok=True)
            try:
                os.rename(directory, trash)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST):
                    return False
                raise
        finally:
            os.close(fd)
        shutil.rmtree(trash, ignore_errors=True)
        return True


def _listdir(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError:
        return []


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def wait_check(control: JobControl, what: str) -> Callable[[], None]:
    """A `check` for lock waits: raises Cancelled once the job is cancelled."""
    def check() -> None:
        if control.is_cancelled():
            raise Cancelled(f"{what}: cancelled while waiting for another job's fetch")
    return check
