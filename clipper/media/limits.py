"""Kernel limits of ffmpeg/ffprobe children: address space and CPU time set by util-linux's
`prlimit` around the command, and how to tell, after a child failed, which limit stopped it.
A hostile source must not take the host down, and a child stopped by a limit fails its job
for good (the same input would hit the limit again)."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
from dataclasses import dataclass

from clipper.errors import PermanentError, TransientError
from clipper.settings import MediaSettings

# util-linux's prlimit sets the limits and execs the command: a preexec_fn would run Python
# between fork and exec, which can deadlock in a process with threads (the daemon's workers).
_PRLIMIT = shutil.which("prlimit")
# seconds of CPU between the soft limit (SIGXCPU, which ffmpeg catches to exit cleanly) and
# the hard one (SIGKILL)
CPU_GRACE = 2
# what a child says when an allocation, a thread stack or a library mapping was refused
_NO_MEMORY = ("Cannot allocate memory", "Resource temporarily unavailable", "failed to map segment",
              "malloc of size", "Out of memory", "std::bad_alloc")


@dataclass(frozen=True)
class ChildLimits:
    """Kernel limits of every ffmpeg/ffprobe child (0: none): address space in bytes
    (RLIMIT_AS) and CPU seconds (RLIMIT_CPU). A hostile source must not take the host down."""

    memory: int = 0
    cpu: int = 0

    @classmethod
    def from_settings(cls, media: MediaSettings) -> ChildLimits:
        return cls(media.max_child_memory, media.max_child_cpu)

    def prefix(self) -> list[str]:
        limits = ([f"--as={self.memory}"] if self.memory else []) + (
            [f"--cpu={self.cpu}:{self.cpu + CPU_GRACE}"] if self.cpu else [])
        if not limits:
            return []
        if _PRLIMIT is None:
            raise TransientError("prlimit (util-linux) is not installed: cannot limit ffmpeg's memory and CPU")
        return [_PRLIMIT, *limits, "--"]

    def exceeded(self, returncode: int, usage: resource.struct_rusage | None, stderr_tail: str) -> str | None:
        """Which limit killed or starved a failed child, or None. CPU: its own CPU time (wait4)
        reached the limit; memory: it says an allocation failed, or crashed on one."""
        if returncode == 0:
            return None
        cpu_used = usage.ru_utime + usage.ru_stime if usage is not None else 0.0
        if self.cpu and (returncode == -signal.SIGXCPU or cpu_used >= self.cpu - 0.5):
            return f"killed at the CPU-time limit media.max_child_cpu = {self.cpu} s (used {cpu_used:.1f} s)"
        crashed = returncode in (-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS)
        if self.memory and (crashed or any(marker in stderr_tail for marker in _NO_MEMORY)):
            return f"ran out of memory under the limit media.max_child_memory = {self.memory} bytes"
        return None


class JobTimeLimit(PermanentError):
    """The job used up `media.job_timeout`: the same input would use it up again."""


class _Process(subprocess.Popen):
    """A Popen that reaps its child with wait4 and keeps its resource usage: the child's own
    CPU time is what tells a CPU-limit kill from a kill by anyone else."""

    rusage: resource.struct_rusage | None = None

    def _try_wait(self, wait_flags: int) -> tuple[int, int]:
        try:
            pid, status, usage = os.wait4(self.pid, wait_flags)
        except ChildProcessError:  # SIGCHLD ignored: as Popen does, the status is lost
            return self.pid, 0
        if pid == self.pid:
            self.rusage = usage
        return pid, status
