"""The command runner with real (tiny) processes."""

import threading
import time

import pytest

from clipper.errors import Cancelled, PermanentError, TransientError
from clipper.media.command import ChildLimits, JobControl, JobTimeLimit, run_command, run_ffmpeg

# an endless, CPU-hungry encode of generated frames into nothing
ENDLESS_ENCODE = ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
                  "-c:v", "libx264", "-preset", "ultrafast", "-f", "null", "-"]


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


def test_timeout_kills_the_whole_group_and_is_permanent() -> None:
    t0 = time.monotonic()
    with pytest.raises(PermanentError, match="timed out after 0.5 s; the same input would time out again"):
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


def test_job_budget_bounds_every_command_and_the_stages_between() -> None:
    control = JobControl("j")
    control.start_budget(0.5)
    with pytest.raises(JobTimeLimit, match=r"sleep stopped: the job used up its time budget media.job_timeout = 0.5 s"):
        run_command(["sleep", "30"], what="sleep", timeout=60, control=control)
    with pytest.raises(JobTimeLimit):  # and nothing else starts
        control.check()
    control.stop_budget()
    control.check()


def test_a_child_past_the_cpu_limit_is_killed_and_the_failure_is_permanent() -> None:
    control = JobControl("j", limits=ChildLimits(cpu=1))
    with pytest.raises(PermanentError, match=r"ffmpeg killed at the CPU-time limit media.max_child_cpu = 1 s"):
        run_ffmpeg(ENDLESS_ENCODE, what="encode", timeout=120, control=control)


def test_a_child_past_the_memory_limit_fails_permanently_naming_it() -> None:
    # x264's threads and lookahead need more than 300 MB of address space
    control = JobControl("j", limits=ChildLimits(memory=300 * 1024**2))
    with pytest.raises(PermanentError, match=r"ffmpeg ran out of memory under the limit media.max_child_memory"):
        run_ffmpeg(ENDLESS_ENCODE, what="encode", timeout=120, control=control)


def test_failed_subprocesses_are_reported_with_their_reason() -> None:
    seen: list[tuple[str, str]] = []
    control = JobControl("j", failed=lambda program, reason: seen.append((program, reason)))
    run_command(["sh", "-c", "exit 2"], what="t", timeout=5, control=control, check=False)
    run_command(["sh", "-c", "kill -TERM $$"], what="t", timeout=5, control=control, check=False)
    with pytest.raises(PermanentError):  # a timeout on the same input is permanent
        run_command(["sleep", "30"], what="t", timeout=0.3, control=control)
    run_command(["true"], what="t", timeout=5, control=control)
    assert seen == [("sh", "exit"), ("sh", "signal"), ("sleep", "timeout")]


def test_progress_reports_are_parsed_while_stdout_is_drained() -> None:
    reports = []
    script = "for i in 1 2 3; do echo out_time_us=${i}000000; echo progress=continue; done; echo progress=end"
    run_command(["sh", "-c", script], what="t", timeout=5, progress=reports.append)
    assert [r.out_seconds for r in reports] == [1.0, 2.0, 3.0, 3.0] and reports[-1].end
