"""Running ffprobe/ffmpeg: one process group per command, a timeout, no unread pipe,
the stderr tail kept for the error message, and a per-job control that lets the main thread
kill every process group of a job at the shutdown deadline.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import ffmpeg

from clipper.errors import Cancelled, EmptyOutput, PermanentError, TransientError

STDERR_TAIL_BYTES = 2000

# After kill -9 of the daemon its ffmpeg children would run on as orphans (they have their own
# session); util-linux's setpriv sets PR_SET_PDEATHSIG so the kernel kills them with it.
_PDEATHSIG = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []

# Demuxers we accept for source media. Anything else (HLS, DASH, concat, image2 with
# patterns, ...) could make ffmpeg open other files or URLs named inside the media.
SOURCE_FORMAT_WHITELIST = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,flv,mpegts,mp3,ogg,wav,aac,mpeg"


@dataclass
class JobControl:
    """The one cancellation object every stage is given: shared between a worker thread (which
    starts processes and asks `check()` / `is_cancelled()` between steps) and the main thread
    (which may cancel the job at the shutdown deadline)."""

    job_id: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event)
    _procs: set[subprocess.Popen] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def is_cancelled(self) -> bool:
        return self.cancelled.is_set()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled(f"job {self.job_id} cancelled by shutdown")

    def _register(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.add(proc)
        if self.cancelled.is_set():  # cancel raced with the start of this process
            _kill_group(proc)

    def _unregister(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def cancel(self) -> None:
        """Kill every process group of this job; the worker then raises Cancelled."""
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
) -> CommandResult:
    """Run `cmd` in its own process group (start_new_session: a kill reaches ffmpeg's children
    too, and a Ctrl-C on the terminal does not reach it before the daemon decides).

    stderr goes to an unlinked temporary file rather than a pipe, so a chatty process can never
    block on a full pipe and memory stays bounded; stdout is read only when asked for.
    """
    if control is not None:
        control.check()
    started = time.monotonic()
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                [*_PDEATHSIG, *cmd],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise TransientError(f"{what}: cannot start {cmd[0]}: {exc}") from exc
        if control is not None:
            control._register(proc)
        try:
            try:
                stdout, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                proc.communicate()
                raise TransientError(f"{what} timed out after {timeout:g} s") from None
            except BaseException:
                _kill_group(proc)
                proc.communicate()
                raise
        finally:
            if control is not None:
                control._unregister(proc)
        err.seek(0, os.SEEK_END)
        size = err.tell()
        err.seek(max(0, size - STDERR_TAIL_BYTES))
        tail = err.read().decode("utf-8", "replace").strip()
    result = CommandResult(proc.returncode, stdout or b"", tail, time.monotonic() - started)
    if control is not None:
        control.check()  # killed by shutdown: not a failure of the job
    if check and proc.returncode != 0:
        last = tail.splitlines()[-3:] if tail else []
        raise failure(f"{what} failed (exit {proc.returncode}): {' | '.join(last) or 'no error output'}")
    return result


def ffmpeg_base() -> list[str]:
    """Global options every ffmpeg gets: never read stdin, no banner, only errors on stderr,
    and an output that received no packet is an error rather than a silent empty file."""
    return ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", "-abort_on", "empty_output"]


def local_input_options(format_whitelist: str = SOURCE_FORMAT_WHITELIST) -> list[str]:
    """Input options for reading a local copy of an untrusted source: only the `file`
    protocol and only container demuxers we accept, so a playlist inside can open nothing.
    `format_whitelist` is widened only to read back our own outputs (gif, images)."""
    return ["-protocol_whitelist", "file", "-format_whitelist", format_whitelist]


# ffmpeg failures that say the machine, not the media, was the problem: worth a retry.
_TRANSIENT_STDERR = ("No space left on device", "Cannot allocate memory", "Resource temporarily unavailable",
                     "Too many open files", "Input/output error")


def run_ffmpeg(cmd: Sequence[str], *, what: str, timeout: float, control: JobControl | None = None) -> CommandResult:
    """Run an ffmpeg command and classify its failure: killed by a signal (OOM killer, an
    operator) or out of disk/memory is transient; any other non-zero exit is a property of
    the media and the command, so retrying cannot help (permanent). Timeouts and shutdown
    are handled by run_command (TransientError, Cancelled)."""
    result = run_command(cmd, what=what, timeout=timeout, control=control, check=False)
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


def seek_input(src: Path, start: float | str | None, read: float | None = None, *,
               threads: int = 0) -> ffmpeg.nodes.FilterableStream:
    """The source as an ffmpeg-python input: input-side seek (`-ss` before `-i`, so ffmpeg
    jumps through the index; None: no seek) and the local-file whitelists. `start` in seconds,
    or already formatted; `read`: input-side `-t`, seconds of the input to read at most;
    `threads` > 0: input-side `-threads N`, which bounds the decoder's threads (the
    output-side `-threads` only bounds the encoder's)."""
    opts = local_input_options()
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
