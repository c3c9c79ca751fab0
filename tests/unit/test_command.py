"""The command runner with real (tiny) processes."""

import threading
import time

import pytest

from clipper.errors import Cancelled, PermanentError, TransientError
from clipper.media.command import JobControl, run_command


def test_stdout_and_stderr_tail() -> None:
    r = run_command(["sh", "-c", "echo out; echo err >&2"], what="t", timeout=5, capture_stdout=True)
    assert r.stdout == b"out\n" and r.stderr_tail == "err"


def test_failure_names_the_stage_and_stderr() -> None:
    with pytest.raises(PermanentError, match=r"clip failed \(exit 3\): boom"):
        run_command(["sh", "-c", "echo boom >&2; exit 3"], what="clip", timeout=5)
    with pytest.raises(TransientError):
        run_command(["sh", "-c", "exit 1"], what="x", timeout=5, failure=TransientError)


def test_large_stderr_never_blocks_and_is_truncated() -> None:
    r = run_command(["sh", "-c", "head -c 5000000 /dev/zero | tr '\\0' x >&2"], what="t", timeout=10)
    assert len(r.stderr_tail) <= 2000


def test_timeout_kills_the_whole_group() -> None:
    t0 = time.monotonic()
    with pytest.raises(TransientError, match="timed out after 0.5 s"):
        run_command(["sh", "-c", "sleep 30 & sleep 30"], what="t", timeout=0.5)
    assert time.monotonic() - t0 < 5


def test_cancel_from_another_thread() -> None:
    control = JobControl("j")
    threading.Timer(0.3, control.cancel).start()
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        run_command(["sleep", "30"], what="t", timeout=60, control=control)
    assert time.monotonic() - t0 < 5
    with pytest.raises(Cancelled):  # no new process starts once cancelled
        run_command(["true"], what="t", timeout=5, control=control)


def test_failed_subprocesses_are_reported_with_their_reason() -> None:
    seen: list[tuple[str, str]] = []
    control = JobControl("j", failed=lambda program, reason: seen.append((program, reason)))
    run_command(["sh", "-c", "exit 2"], what="t", timeout=5, control=control, check=False)
    run_command(["sh", "-c", "kill -TERM $$"], what="t", timeout=5, control=control, check=False)
    with pytest.raises(TransientError):
        run_command(["sleep", "30"], what="t", timeout=0.3, control=control)
    run_command(["true"], what="t", timeout=5, control=control)
    assert seen == [("sh", "exit"), ("sh", "signal"), ("sleep", "timeout")]


def test_progress_reports_are_parsed_while_stdout_is_drained() -> None:
    reports = []
    script = "for i in 1 2 3; do echo out_time_us=${i}000000; echo progress=continue; done; echo progress=end"
    run_command(["sh", "-c", script], what="t", timeout=5, progress=reports.append)
    assert [r.out_seconds for r in reports] == [1.0, 2.0, 3.0, 3.0] and reports[-1].end
