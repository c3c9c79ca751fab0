"""How far a job has got: ffmpeg's `-progress` reports parsed, and the job's percent done and
time left computed over all of its outputs, told to whoever listens about once a second.

ffmpeg writes one block of `key=value` lines per report (about twice a second), each block
ending with `progress=continue`, the last with `progress=end`. Only `out_time_us` (media time
written so far) is needed: an output's share of the job is its length in media seconds, so a
long re-encode moves the bar as it should and a stream copy barely shows. Pure logic, with the
clock injected, so it is tested without ffmpeg.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO

REPORT_EVERY = 1.0  # seconds between reports to Redis: enough for a live view, cheap for Redis
THUMBNAIL_WEIGHT = 1.0  # a thumbnail counts as one second of media (one frame, decoded once)
MIN_FRACTION_FOR_ETA = 0.01  # before 1 % an estimate of time left is noise

# the global options that make ffmpeg write its reports to stdout, and not its stats line to stderr
PROGRESS_OPTIONS = ("-progress", "pipe:1", "-nostats")


@dataclass(frozen=True)
class FfmpegProgress:
    """One ffmpeg report: media seconds written so far; `end` on the last one."""

    out_seconds: float
    end: bool = False


def parse_progress(lines: Iterable[str]) -> Iterator[FfmpegProgress]:
    """ffmpeg `-progress` output -> one FfmpegProgress per complete block. Values ffmpeg does
    not know yet ("N/A") and the negative times of the first frames count as 0."""
    out_us = 0
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if not sep:
            continue
        if key == "out_time_us":
            try:
                out_us = max(0, int(value.strip()))
            except ValueError:
                pass  # N/A: keep the last known time
        elif key == "progress":
            yield FfmpegProgress(out_us / 1_000_000, end=value.strip() == "end")


@dataclass(frozen=True)
class ProgressReport:
    stage: str
    percent: float
    eta: float | None  # seconds left for the job's remaining outputs, when it can be told


class JobProgress:
    """Percent done over a job's outputs (weights: media seconds), never going backwards, and
    an estimate of time left from the rate so far. `report` is called at most once per
    `every` seconds, and always for the first and the last report of each output."""

    def __init__(self, weights: list[float], report: Callable[[ProgressReport], None], *,
                 clock: Callable[[], float] = time.monotonic, every: float = REPORT_EVERY):
        self.total = sum(max(0.0, w) for w in weights) or 1.0
        self.report = report
        self.clock = clock
        self.every = every
        self.done = 0.0  # weight of the outputs finished
        self.current = 0.0  # weight of the output being made
        self.current_fraction = 0.0
        self.stage = ""
        self.started: float | None = None
        self.last_report: float | None = None

    def begin(self, stage: str, weight: float) -> None:
        """The next output starts (a clip of `weight` media seconds, or a thumbnail)."""
        if self.started is None:
            self.started = self.clock()
        self.stage, self.current, self.current_fraction = stage, max(0.0, weight), 0.0
        self._report(force=True)

    def ffmpeg(self, p: FfmpegProgress) -> None:
        """A report of the ffmpeg making the current output (a smart cut runs several: the
        fraction only ever grows)."""
        if self.current > 0:
            self.current_fraction = max(self.current_fraction, min(1.0, p.out_seconds / self.current))
        self._report(force=False)

    def finish(self) -> None:
        """The current output is made."""
        self.done += self.current
        self.current, self.current_fraction = 0.0, 0.0
        self._report(force=True)

    def fraction(self) -> float:
        return min(1.0, (self.done + self.current * self.current_fraction) / self.total)

    def eta(self) -> float | None:
        f = self.fraction()
        if self.started is None or f < MIN_FRACTION_FOR_ETA:
            return None
        elapsed = self.clock() - self.started
        return round(elapsed * (1 - f) / f, 1)

    def _report(self, *, force: bool) -> None:
        now = self.clock()
        if not force and self.last_report is not None and now - self.last_report < self.every:
            return
        self.last_report = now
        self.report(ProgressReport(self.stage, round(100 * self.fraction(), 1), self.eta()))


def read_progress(stream: IO[bytes], report: Callable[[FfmpegProgress], None]) -> None:
    """Parse reports until ffmpeg closes stdout; a failing listener never stops the draining
    (ffmpeg would block on a full pipe)."""
    lines: Iterable[str] = (line.decode("utf-8", "replace") for line in stream)
    for p in parse_progress(lines):
        try:
            report(p)
        except Exception:  # noqa: BLE001, S112 - progress is informative
            continue
