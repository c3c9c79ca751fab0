"""The pid lock with real files and processes (no daemon, no Redis)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clipper.daemon import AlreadyRunning, PidLock, lock_holder


def hold_lock_in_child(pid_file: Path) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from clipper.daemon import PidLock
        PidLock(Path({str(pid_file)!r})).acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_lock_writes_pid_and_blocks_a_second_holder(tmp_path: Path) -> None:
    pid_file = tmp_path / "run" / "c.pid"
    child = hold_lock_in_child(pid_file)
    try:
        assert lock_holder(pid_file) == child.pid
        with pytest.raises(AlreadyRunning, match=f"pid {child.pid}"):
            PidLock(pid_file).acquire()
    finally:
        child.kill()
        child.wait()
    # kill -9 leaves a stale file with a dead pid: no obstacle
    assert pid_file.read_text().strip() == str(child.pid)
    assert lock_holder(pid_file) is None
    lock = PidLock(pid_file)
    lock.acquire()
    assert pid_file.read_text().strip() == str(os.getpid())
    lock.release()
    assert pid_file.read_text() == ""


def test_a_file_naming_a_live_pid_without_the_lock_is_not_running(tmp_path: Path) -> None:
    pid_file = tmp_path / "c.pid"
    pid_file.write_text(f"{os.getppid()}\n")  # a live process that does not hold the lock
    assert lock_holder(pid_file) is None


def test_missing_file_is_not_running(tmp_path: Path) -> None:
    assert lock_holder(tmp_path / "nope.pid") is None


def test_a_status_probe_racing_with_start_does_not_make_it_fail(tmp_path: Path) -> None:
    """`clipper status` probes with a brief shared flock; a start meeting it must still win."""
    import fcntl
    import threading

    pid_file = tmp_path / "c.pid"
    pid_file.touch()
    fd = os.open(pid_file, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a probe caught in the middle
    threading.Timer(0.1, lambda: (fcntl.flock(fd, fcntl.LOCK_UN), os.close(fd))).start()
    lock = PidLock(pid_file)
    lock.acquire()
    assert lock_holder(pid_file) == os.getpid()
    lock.release()
