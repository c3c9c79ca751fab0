"""Checks of media outputs with ffprobe/ffmpeg, shared by the tests of tests/media."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from clipper.jobs.probe import MediaInfo

SLACK = 0.0005  # clipper.jobs.clip.BOUNDARY_SLACK
ALIGNED_DB = 32.0  # re-encoded frames at x264 crf 20-23 score 36-50 dB; a neighbour frame ~22 dB


@dataclass(frozen=True)
class Source:
    name: str
    path: Path
    info: MediaInfo
    gop: float | None = None  # seconds between keyframes
    fps: Fraction = Fraction(30)


def ffprobe_json(path: Path, *args: str) -> dict:
    r = subprocess.run(["ffprobe", "-v", "error", *args, "-of", "json", str(path)], capture_output=True, check=True,
                       timeout=60)
    return json.loads(r.stdout)


def decode_errors(path: Path) -> str:
    """What a full decode prints at `-v error` (empty for a clean file)."""
    r = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True,
                       timeout=120)
    return (r.stderr.decode(errors="replace") + ("" if r.returncode == 0 else f"exit {r.returncode}")).strip()


def frame_count(path: Path) -> int:
    data = ffprobe_json(path, "-count_frames", "-select_streams", "v:0", "-show_entries", "stream=nb_read_frames")
    return int(data["streams"][0]["nb_read_frames"])


def source_frames(src: Source, start: float, end: float) -> int:
    """Frames of the source with start <= pts < end (a frame within SLACK of either is at it)."""
    data = ffprobe_json(src.path, "-select_streams", "v:0", "-read_intervals", f"{max(0, start - 3)}%{end + 3}",
                        "-show_entries", "packet=pts_time")
    times = {round(float(p["pts_time"]), 6) for p in data["packets"]}
    return sum(1 for t in times if start - SLACK <= t < end - SLACK)


def frame_psnrs(out: Path, src: Source, start: float, duration: float) -> list[float]:
    """PSNR of every output frame against the source frame it should be (the n-th frame from
    `start`), pairing by frame number so timestamp rounding cannot pair the wrong frames."""
    tb = f"{src.fps.denominator}/{src.fps.numerator}"
    graph = (f"[0:v]settb={tb},setpts=N[a];[1:v]settb={tb},setpts=N[b];"
             f"[a][b]psnr=stats_file=-:shortest=1")
    r = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(out), "-ss", f"{start - SLACK:.6f}",
                        "-t", f"{duration:.6f}", "-i", str(src.path), "-lavfi", graph, "-f", "null", "-"],
                       capture_output=True, timeout=120, check=True)
    values = re.findall(r"psnr_avg:(\S+)", r.stdout.decode())
    return [float(v) for v in values]


def assert_frame_exact(out: Path, src: Source, start: float, end: float) -> None:
    """Same frames as the source's [start, end): count, content (PSNR per frame), clean decode."""
    assert decode_errors(out) == ""
    expected = source_frames(src, start, end)
    assert frame_count(out) == expected
    psnrs = frame_psnrs(out, src, start, end - start)
    assert len(psnrs) == expected
    bad = [(i, round(p, 1)) for i, p in enumerate(psnrs) if p < ALIGNED_DB]
    assert not bad, f"frames not matching the source (index, dB): {bad[:10]}"
