"""Running ffprobe/ffmpeg: one process group per command, a timeout, no unread pipe,
the stderr tail kept for the error message, kernel limits (address space, CPU time) on every
child (clipper.media.limits), and a per-job control that carries the job's time budget, lets
the main thread kill every process group of a job at the shutdown deadline, and through which
the job hears of ffmpeg's progress and the loop of failed subprocesses.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import ffmpeg

from clipper.errors import Cancelled, EmptyOutput, PermanentError, TransientError
from clipper.media.limits import ChildLimits, JobTimeLimit, _Process
from clipper.media.progress import PROGRESS_OPTIONS, FfmpegProgress, read_progress

STDERR_TAIL_BYTES = 2000

# After kill -9 of the daemon its ffmpeg children would run on as orphans (they have their own
# session); util-linux's setpriv sets PR_SET_PDEATHSIG so the kernel kills them with it.
_PDEATHSIG = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
# Demuxers we accept for source media. Anything else (HLS, DASH, concat, image2 with
# patterns, ...) could make ffmpeg open other files or URLs named inside the media.
SOURCE_FORMAT_WHITELIST = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,flv,mpegts,mp3,ogg,wav,aac,mpeg"
# Where clipper.sources serves a remote source to ffmpeg (loopback only).
LOOPBACK_URL_PREFIX = "http://127.0.0.1:"


@dataclass
class JobControl:
    """The one cancellation object every stage is given: shared between a worker thread (which
    starts processes and asks `check()` / `is_cancelled()` between steps) and the main thread
    (which may cancel the job at the shutdown deadline)."""

    job_id: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event)
    limits: ChildLimits = ChildLimits()
    budget: float = 0.0  # media.job_timeout while a budget runs
    _deadline: float | None = None  # monotonic end of the budget
    # ffmpeg's reports while the job watches them (set around an encode; None: not asked)
    progress: Callable[[FfmpegProgress], None] | None = None
    # (program, reason) of each subprocess that failed: "exit", "signal", "timeout", "cancelled"
    failed: Callable[[str, str], None] | None = None
    # (program, exit status, seconds, peak resident memory in bytes) of each subprocess that ended
    finished: Callable[[str, int, float, int], None] | None = None
    reason: str = "shutdown"  # or "request": `clipper cancel` (the job is finished, not requeued)
    _procs: set[subprocess.Popen] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def is_cancelled(self) -> bool:
        return self.cancelled.is_set()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled(f"job {self.job_id} cancelled by {self.reason}")
        if self._deadline is not None and time.monotonic() >= self._deadline:
            raise JobTimeLimit(f"the job used up its time budget media.job_timeout = {self.budget:g} s")

    def start_budget(self, seconds: float) -> None:
        self.budget, self._deadline = seconds, time.monotonic() + seconds

    def stop_budget(self) -> None:
        self._deadline = None

    def bounded(self, timeout: float) -> tuple[float, bool]:
        """A command's timeout cut to what is left of the budget; True when the budget is shorter."""
        if self._deadline is None:
            return timeout, False
        left = max(0.0, self._deadline - time.monotonic())
        return (left, True) if left < timeout else (timeout, False)

    def _register(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.add(proc)
        if self.cancelled.is_set():  # cancel raced with the start of this process
            _kill_group(proc)

    def _unregister(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def cancel(self, reason: str = "shutdown") -> None:
        """Kill every process group of this job; the worker then raises Cancelled. The first
        reason stands (a job cancelled on request stays so when the shutdown deadline comes)."""
        with self._lock:
            if not self.cancelled.is_set():
                self.reason = reason
        self.cancelled.set()
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            _kill_group(proc)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: bytes
    stderr_tail: str
    seconds: float


def run_command(
    cmd: Sequence[str],
    *,
    what: str,
    timeout: float,
    control: JobControl | None = None,
    capture_stdout: bool = False,
    failure: type[PermanentError] | type[TransientError] = PermanentError,
    check: bool = True,
    progress: Callable[[FfmpegProgress], None] | None = None,
) -> CommandResult:
    """Run `cmd` in its own process group (start_new_session: a kill reaches ffmpeg's children
    too, and a Ctrl-C on the terminal does not reach it before the daemon decides).

    stderr goes to an unlinked temporary file rather than a pipe, so a chatty process can never
    block on a full pipe and memory stays bounded; stdout is read only when asked for, or by a
    thread that parses `-progress` reports (`progress`) and never stops draining the pipe. With a
    `control`, the job's `ChildLimits` apply and the timeout is cut to its remaining budget; a
    child stopped by either is a PermanentError naming the setting.
    """
    if control is not None:
        control.check()
    limits = control.limits if control is not None else ChildLimits()
    timeout, by_budget = control.bounded(timeout) if control is not None else (timeout, False)
    started = time.monotonic()
    with tempfile.TemporaryFile() as err:
        proc = _start(cmd, limits, err, capture_stdout or progress is not None, what)
        if control is not None:
            control._register(proc)
        try:
            stdout = _wait(proc, timeout, what, progress, by_budget, control, cmd[0])
        finally:
            if control is not None:
                control._unregister(proc)
        tail = _tail(err)
    result = CommandResult(proc.returncode, stdout or b"", tail, time.monotonic() - started)
    if control is not None and control.finished is not None:
        # ru_maxrss is in KiB on Linux: the child's own peak (setpriv and prlimit exec into it)
        peak = proc.rusage.ru_maxrss * 1024 if proc.rusage is not None else 0
        control.finished(cmd[0], proc.returncode, round(result.seconds, 3), peak)
    if proc.returncode != 0 and control is not None and control.failed is not None:
        cancelled = control.cancelled.is_set()
        control.failed(cmd[0], "cancelled" if cancelled else "signal" if proc.returncode < 0 else "exit")
    if control is not None:
        control.check()  # killed by shutdown: not a failure of the job
    limit = limits.exceeded(proc.returncode, proc.rusage, tail)
    if limit is not None:  # the same input would hit it again
        raise PermanentError(f"{what}: {cmd[0]} {limit}")
    if check and proc.returncode != 0:
        last = tail.splitlines()[-3:] if tail else []
        raise failure(f"{what} failed (exit {proc.returncode}): {' | '.join(last) or 'no error output'}")
    return result


def _start(cmd: Sequence[str], limits: ChildLimits, err: IO[bytes], read_stdout: bool, what: str) -> _Process:
    try:
        return _Process(
            [*_PDEATHSIG, *limits.prefix(), *cmd],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if read_stdout else subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        raise TransientError(f"{what}: cannot start {cmd[0]}: {exc}") from exc


def _tail(err: IO[bytes]) -> str:
    """The last STDERR_TAIL_BYTES of what the process wrote to stderr."""
    err.seek(0, os.SEEK_END)
    err.seek(max(0, err.tell() - STDERR_TAIL_BYTES))
    return err.read().decode("utf-8", "replace").strip()


def _wait(proc: subprocess.Popen, timeout: float, what: str, progress: Callable[[FfmpegProgress], None] | None,
          by_budget: bool, control: JobControl | None, program: str) -> bytes | None:
    """Wait for `proc` (reading stdout as asked); on timeout or any interruption kill its group.
    A timeout is permanent: the same command on the same input takes as long next time."""
    reader = None
    if progress is not None and proc.stdout is not None:
        reader = threading.Thread(target=read_progress, args=(proc.stdout, progress), daemon=True,
                                  name="ffmpeg-progress")
        reader.start()
    try:
        if reader is not None:
            proc.wait(timeout=timeout)
            return None
        stdout, _ = proc.communicate(timeout=timeout)
        return stdout
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        _reap(proc, reader)
        if control is not None and control.failed is not None:
            control.failed(program, "timeout")
        if control is not None and control.is_cancelled():
            control.check()  # a shutdown that came at the same moment: not the job's fault
        if by_budget and control is not None:
            raise JobTimeLimit(f"{what} stopped: the job used up its time budget media.job_timeout = "
                               f"{control.budget:g} s") from None
        raise PermanentError(f"{what} timed out after {timeout:g} s; the same input would time out again") from None
    except BaseException:
        _kill_group(proc)
        _reap(proc, reader)
        raise
    finally:
        if reader is not None:
            reader.join()
            proc.stdout.close()  # type: ignore[union-attr]


def _reap(proc: subprocess.Popen, reader: threading.Thread | None) -> None:
    if reader is not None:
        proc.wait()
    else:
        proc.communicate()


def ffmpeg_base() -> list[str]:
    """Global options every ffmpeg gets: never read stdin, no banner, only errors on stderr,
    and an output that received no packet is an error rather than a silent empty file."""
    return ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", "-abort_on", "empty_output"]


def local_input_options(format_whitelist: str = SOURCE_FORMAT_WHITELIST, src: Path | str | None = None) -> list[str]:
    """Input options for reading an untrusted source: only container demuxers we accept, so a
    playlist inside can open nothing, and one protocol: `file` for a local copy, or `http,tcp`
    when `src` is the loopback URL clipper.sources serves the job's remote source on (ffmpeg
    can then reach that endpoint and nothing else: no file, no other scheme; data references
    stay off, as by default). `format_whitelist` is widened only to read back our own outputs."""
    protocols = "http,tcp" if str(src or "").startswith(LOOPBACK_URL_PREFIX) else "file"
    return ["-protocol_whitelist", protocols, "-format_whitelist", format_whitelist]


# ffmpeg failures that say the machine, not the media, was the problem: worth a retry.
_TRANSIENT_STDERR = ("No space left on device", "Cannot allocate memory", "Resource temporarily unavailable",
                     "Too many open files", "Input/output error")


def run_ffmpeg(cmd: Sequence[str], *, what: str, timeout: float, control: JobControl | None = None) -> CommandResult:
    """Run an ffmpeg command and classify its failure: killed by a signal (OOM killer, an
    operator) or out of disk/memory is transient; any other non-zero exit is a property of
    the media and the command, so retrying cannot help (permanent). Timeouts, limits and
    shutdown are handled by run_command (PermanentError, Cancelled)."""
    watch = control.progress if control is not None else None
    if watch is not None:  # global options: right after the program name
        cmd = [cmd[0], *PROGRESS_OPTIONS, *cmd[1:]]
    result = run_command(cmd, what=what, timeout=timeout, control=control, check=False, progress=watch)
    if result.returncode == 0:
        return result
    last = " | ".join(result.stderr_tail.splitlines()[-3:]) or "no error output"
    if result.returncode < 0:
        raise TransientError(f"{what}: ffmpeg killed by signal {-result.returncode}: {last}")
    if any(marker in result.stderr_tail for marker in _TRANSIENT_STDERR):
        raise TransientError(f"{what} failed (exit {result.returncode}): {last}")
    if "Empty output" in result.stderr_tail:
        raise EmptyOutput(f"{what} failed (exit {result.returncode}): {last}")
    raise PermanentError(f"{what} failed (exit {result.returncode}): {last}")


# -- ffmpeg-python arguments (pure) ------------------------------------------------------------

def seconds_arg(seconds: float) -> str:
    """Seconds for the command line: microsecond precision, no float noise ("5.5", not 5.500000001)."""
    text = f"{seconds:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def seek_input(src: Path | str, start: float | str | None, read: float | None = None, *,
               threads: int = 0) -> ffmpeg.nodes.FilterableStream:
    """The source as an ffmpeg-python input: input-side seek (`-ss` before `-i`, so ffmpeg
    jumps through the index; None: no seek) and the local-file whitelists. `start` in seconds,
    or already formatted; `read`: input-side `-t`, seconds of the input to read at most;
    `threads` > 0: input-side `-threads N`, which bounds the decoder's threads (the
    output-side `-threads` only bounds the encoder's)."""
    opts = local_input_options(src=src)
    kwargs: dict[str, object] = dict(zip((o.lstrip("-") for o in opts[::2]), opts[1::2], strict=True))
    if start is not None:
        kwargs["ss"] = start if isinstance(start, str) else seconds_arg(start)
    if read is not None:
        kwargs["t"] = seconds_arg(read)
    if threads > 0:
        kwargs["threads"] = threads
    return ffmpeg.input(str(src), **kwargs)


def ffmpeg_argv(*streams: object, out: Path, **kwargs: object) -> list[str]:
    return [*ffmpeg_base(), *ffmpeg.output(*streams, str(out), **kwargs).get_args()]


def output_thread_options(threads: int, *, filtered: bool) -> dict[str, object]:
    """Output-side thread bounds (the decoder's is on the input, see `seek_input`)."""
    if threads <= 0:
        return {}
    opts: dict[str, object] = {"threads": threads}
    if filtered:
        opts["filter_complex_threads"] = threads  # a global option: ffmpeg takes it anywhere
    return opts
