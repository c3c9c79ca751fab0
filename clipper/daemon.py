"""Process lifecycle: the pid-file lock, detaching, readiness, stop-and-wait.

The pid file is locked with `fcntl.flock` for the daemon's whole life. The lock, not the
file's existence, says whether a daemon runs: a stale file left by kill -9 is no obstacle
(the kernel dropped the lock with the process), and a live lock cannot be stolen. The file is
never unlinked (unlinking would let a second daemon lock a fresh inode while the first still
holds the old one); it is truncated at a clean exit.

`start` forks a child that detaches with python-daemon's DaemonContext; the daemon reports
"ready <pid>" or "error <reason>" through a pipe, so `clipper start` exits 0 only when the
daemon holds its lock and has reached Redis.

`live()` is the daemon's whole life, detached or in the foreground, as named steps: open the
log, take the pid lock, prepare the service (which reports readiness), run it, handle a crash,
release the lock, and `os._exit` when worker threads cannot be waited for.

This module knows processes and pid files, not Redis: the service it runs is given to it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import daemon as python_daemon

from clipper import logs
from clipper.settings import Settings

PROBE_GRACE = 0.5  # seconds a busy pid lock is retried before "already running"


class AlreadyRunning(Exception):
    pass


class CannotStart(Exception):
    """The service cannot reach what it needs; the message is the reason, fit to print."""


class PidLock:
    """An exclusive flock on the pid file, held until the process exits."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise OSError(f"cannot open pid file {self.path}: {exc.strerror}") from exc
        # `status`/`stop` probe the lock with a brief shared flock; a start that meets such a
        # probe must not fail, so a busy lock is tried again for a moment before it counts.
        deadline = time.monotonic() + PROBE_GRACE
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    os.close(fd)
                    pid = read_pid(self.path)
                    raise AlreadyRunning(f"already running (pid {pid if pid else 'unknown'}, lock on {self.path})") from None
                time.sleep(0.02)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def lock_holder(path: Path) -> int | None:
    """The pid of the process holding the lock on `path`, or None when nobody holds it.

    Probing with a non-blocking flock from here is the authoritative test; the pid comes from
    the file, written by the holder right after it took the lock (retried briefly, for the
    instant between the two).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
    finally:
        os.close(fd)
    for _ in range(50):
        pid = read_pid(path)
        if pid and _alive(pid):
            return pid
        time.sleep(0.02)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Readiness:
    """The write end of the pipe to `clipper start` (None in the foreground)."""

    fd: int | None = None

    def ready(self) -> None:
        self._say(f"ready {os.getpid()}")

    def fail(self, reason: str) -> None:
        self._say("error " + " ".join(reason.split()))

    def _say(self, line: str) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, (line + "\n").encode())
            os.close(self.fd)
        except OSError:
            pass
        self.fd = None


def start_detached(run: Callable[[Readiness], int], *, wait: float = 30.0) -> tuple[bool, str]:
    """Fork; the child detaches (DaemonContext: double fork, setsid, umask 022, chdir /,
    stdin closed, other fds closed) and calls `run(readiness)`. The parent waits for
    the readiness line. Returns (ok, "pid" or reason)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        code = 1
        try:
            context = python_daemon.DaemonContext(
                umask=0o022,
                working_directory="/",
                files_preserve=[write_fd],
                detach_process=True,
                signal_map={},  # the daemon installs its own handlers in its main thread
                prevent_core=True,
            )
            with context:
                code = run(Readiness(write_fd))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # noqa: BLE001 - report anything to the waiting parent
            try:
                os.write(write_fd, f"error {type(exc).__name__}: {exc}\n".encode())
            except OSError:
                pass
        finally:
            os._exit(code if isinstance(code, int) else 1)
    os.close(write_fd)
    os.waitpid(pid, 0)  # the intermediate child exits as soon as DaemonContext detaches
    return _read_readiness(read_fd, wait)


def _read_readiness(fd: int, wait: float) -> tuple[bool, str]:
    deadline = time.monotonic() + wait
    data = b""
    try:
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                return False, f"daemon did not report ready within {wait:g} s (see the log file)"
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                return False, "daemon exited before it was ready (see the log file)"
            data += chunk
    finally:
        os.close(fd)
    line = data.split(b"\n", 1)[0].decode("utf-8", "replace")
    word, _, rest = line.partition(" ")
    return (True, rest) if word == "ready" else (False, rest or line)


def stop_and_wait(pid_file: Path, timeout: float, report: Callable[[str], None],
                  waiting_for: Callable[[], str | None] = lambda: None) -> bool:
    """SIGTERM the lock holder, then wait until the lock is free. True when stopped (or when
    nothing was running). Never signals a pid that does not hold the lock."""
    pid = lock_holder(pid_file)
    if pid is None:
        report("not running")
        return True
    os.kill(pid, signal.SIGTERM)
    report(f"sent SIGTERM to pid {pid}; waiting up to {timeout:g} s for it to drain and exit")
    deadline = time.monotonic() + timeout
    last_said = 0.0
    while time.monotonic() < deadline:
        if lock_holder(pid_file) != pid:
            report(f"stopped (pid {pid})")
            return True
        if time.monotonic() - last_said >= 2.0:
            what = waiting_for()
            if what:
                report(f"waiting for pid {pid}: {what}")
            last_said = time.monotonic()
        time.sleep(0.1)
    report(f"still running after {timeout:g} s (pid {pid})")
    return False



class Service(Protocol):
    """What the daemon runs (entry.Supervisor)."""

    def prepare(self) -> None: ...

    def run(self) -> int: ...

    def leftovers(self) -> bool: ...

    def cancel_in_flight(self) -> None: ...


def live(settings: Settings, readiness: Readiness, make_service: Callable[[Settings, Readiness], Service], *,
         foreground: bool) -> int:
    """The daemon's life: log, lock, prepare, run, release. Returns the exit code."""
    log = _open_log(settings, foreground)
    lock = _take_pid_lock(settings.daemon.pid_file, readiness, log)
    if lock is None:
        return 1
    service: Service | None = None
    try:
        service = _prepare(settings, readiness, make_service, log)
        return 1 if service is None else _run(service, log)
    finally:
        _release(lock, service)


def _open_log(settings: Settings, foreground: bool) -> Any:
    logs.configure(settings.daemon.log_file, level=settings.daemon.log_level, foreground=foreground,
                   take_std_fds=not foreground)
    return logs.get_logger(env=settings.env)


def _take_pid_lock(path: Path, readiness: Readiness, log: Any) -> PidLock | None:
    lock = PidLock(path)
    try:
        lock.acquire()
    except (AlreadyRunning, OSError) as exc:
        readiness.fail(str(exc))
        log.error("daemon.start_failed", error=str(exc))
        return None
    return lock


def _prepare(settings: Settings, readiness: Readiness, make_service: Callable[[Settings, Readiness], Service],
             log: Any) -> Service | None:
    """Build and prepare the service; on failure tell `clipper start` why (None)."""
    try:
        service = make_service(settings, readiness)
        service.prepare()
    except CannotStart as exc:
        readiness.fail(str(exc))
        log.error("daemon.start_failed", error=str(exc))
        return None
    except Exception as exc:
        log.exception("daemon.start_failed")
        readiness.fail(f"{type(exc).__name__}: {exc}")
        return None
    return service


def _run(service: Service, log: Any) -> int:
    try:
        return service.run()
    except Exception:
        log.exception("daemon.crashed")  # a bug; the items we held are recovered at the next start
        return 1


def _release(lock: PidLock, service: Service | None) -> None:
    """Workers still running (a crash, Redis gone past the deadline) or stuck in a call that
    cannot be interrupted: kill their process groups before the lock goes (their items are
    requeued, or stay in the processing list for the next start), and do not let interpreter
    shutdown join their threads forever."""
    leftovers = service is not None and service.leftovers()
    if leftovers:
        service.cancel_in_flight()
    lock.release()
    if leftovers:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
