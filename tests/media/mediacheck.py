"""Checks of media outputs with ffprobe/ffmpeg, shared by the tests of tests/media."""

from __future__ import annotations

import json
import math
import re
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from clipper.jobs.probe import MediaInfo

SLACK = 0.0005  # clipper.media.seek.BOUNDARY_SLACK
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


# -- an independent oracle: whole decodes, no seeking ---------------------------------------
#
# The checks above find the source frames with ffmpeg's own `-ss`, so they share any mistake
# the code under test makes with it (a container start time other than 0, a seek landing past
# frames shown before a keyframe). These decode source and output from their first packet,
# compare small gray thumbnails of every frame, and compute which source frames the clip must
# hold from the packet timestamps alone.

ORACLE_W, ORACLE_H = 64, 48
ORACLE_DB = 38.0  # the same frame re-encoded scores ~45-50 dB at this size, a neighbouring frame <= 30 dB


def gray_frames(path: Path) -> list[bytes]:
    """Every video frame, decoded from the start without seeking, as 64x48 8-bit gray, in
    presentation order (passthrough: nothing duplicated or dropped)."""
    r = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v:0",
                        "-vf", f"scale={ORACLE_W}:{ORACLE_H}:flags=area,format=gray", "-fps_mode", "passthrough",
                        "-f", "rawvideo", "-"], capture_output=True, timeout=120, check=True)
    size = ORACLE_W * ORACLE_H
    return [r.stdout[i:i + size] for i in range(0, len(r.stdout), size)]


def frame_clip_times(path: Path, *, keyframes_only: bool = False) -> list[Fraction]:
    """Presentation times of every video frame (or keyframe) in clip time (relative to the
    container's start time, as players and `-ss` count), from the packet timestamps, sorted."""
    data = ffprobe_json(path, "-select_streams", "v:0",
                        "-show_entries", "packet=pts,flags:stream=time_base:format=start_time")
    tb = Fraction(data["streams"][0]["time_base"])
    origin = Fraction(data["format"].get("start_time", "0"))
    return sorted(int(p["pts"]) * tb - origin for p in data["packets"] if not keyframes_only or "K" in p["flags"])


def expected_source_frames(times: list[Fraction], start: float, end: float) -> range:
    """Indices (presentation order) of the source frames (`frame_clip_times`) a clip
    [start, end) holds: start <= t < end in clip time, a frame within SLACK of either counting
    as at it."""
    lo, hi = Fraction(start) - Fraction(SLACK), Fraction(end) - Fraction(SLACK)
    chosen = [i for i, t in enumerate(times) if lo <= t < hi]
    assert chosen, f"no source frame in [{start}, {end})"
    return range(chosen[0], chosen[-1] + 1)


def _mse(a: bytes, b: bytes) -> float:
    return sum((x - y) * (x - y) for x, y in zip(a, b, strict=True)) / len(a)


def _psnr(mse: float) -> float:
    return 99.0 if mse == 0 else 10 * math.log10(255 * 255 / mse)


def psnr(a: bytes, b: bytes) -> float:
    """PSNR of two `gray_frames` pictures, in dB (99 when identical)."""
    return _psnr(_mse(a, b))


def assert_same_frames_as_source(out: Path, src: Path, start: float, end: float, *, window: int = 3,
                                 min_db: float = ORACLE_DB) -> int:
    """The clip holds exactly the source frames of [start, end), consecutive and in order:
    frame count, and each output frame is closest to the expected source frame (among its
    neighbours within `window`) and close in absolute terms (PSNR >= `min_db`). Returns the
    frame count."""
    times = frame_clip_times(src)
    wanted = expected_source_frames(times, start, end)
    source, clip = gray_frames(src), gray_frames(out)
    assert len(source) == len(times), "source decodes to as many frames as it has packets"
    assert len(clip) == len(wanted), f"{len(clip)} frames, expected {len(wanted)} (source frames {wanted.start}..{wanted.stop - 1})"
    wrong = []
    for i, frame in enumerate(clip):
        expect = wanted[i]
        candidates = range(max(0, expect - window), min(len(source), expect + window + 1))
        errors = {j: _mse(frame, source[j]) for j in candidates}
        best = min(errors, key=errors.__getitem__)
        if best != expect or _psnr(errors[expect]) < min_db:
            wrong.append((i, expect, best, round(_psnr(errors[expect]), 1)))
    assert not wrong, f"output frames not matching the source (index, expected, closest, dB): {wrong[:8]}"
    return len(clip)


def video_dts(path: Path) -> list[int]:
    """DTS of the video packets in decode order (ticks). MP4 only: Matroska stores no DTS."""
    data = ffprobe_json(path, "-select_streams", "v:0", "-show_entries", "packet=dts")
    assert all("dts" in p for p in data["packets"]), f"{path.name}: packets without DTS"
    return [int(p["dts"]) for p in data["packets"]]


def assert_uniform_dts(path: Path) -> None:
    """Constant frame rate in, constant DTS steps out: a join whose decode delay differs
    makes the muxer squash timestamps into 1-tick steps."""
    dts = video_dts(path)
    steps = sorted({b - a for a, b in zip(dts, dts[1:], strict=False)})
    assert len(steps) == 1, f"DTS steps {steps}"


def idr_pic_ids(path: Path) -> list[int | None]:
    """Per access unit in decode order: its idr_pic_id if it is an IDR picture, else None
    (from the trace_headers bitstream filter)."""
    r = subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-nostats", "-i", str(path), "-map", "0:v:0", "-c", "copy",
                        "-bsf:v", "trace_headers", "-f", "null", "-"], capture_output=True, timeout=120, check=True)
    units: list[int | None] = []
    idr = False
    for line in r.stderr.decode(errors="replace").splitlines():
        if "] Packet:" in line:
            units.append(None)
            idr = False
        elif units and re.search(r"nal_unit_type\s+\d+ = 5$", line):
            idr = True
        elif units and idr and units[-1] is None and "idr_pic_id" in line:
            units[-1] = int(line.rsplit("=", 1)[1])
    return units


def assert_idr_ids_alternate(path: Path) -> None:
    """H.264 7.4.3: two consecutive IDR access units must not share idr_pic_id."""
    units = idr_pic_ids(path)
    assert units and units[0] is not None, "the stream starts with an IDR picture"
    same = [i for i, (a, b) in enumerate(zip(units, units[1:], strict=False)) if a is not None and a == b]
    assert not same, f"consecutive IDR pictures with the same idr_pic_id at access units {same}"


def audio_packets(path: Path) -> list[tuple[Fraction, str]]:
    """(clip time, MD5 of the data) of every audio packet, read from the start without seeking."""
    data = ffprobe_json(path, "-select_streams", "a:0", "-show_data_hash", "MD5",
                        "-show_entries", "packet=pts,data_hash:stream=time_base:format=start_time")
    tb = Fraction(data["streams"][0]["time_base"])
    origin = Fraction(data["format"].get("start_time", "0"))
    return [(int(p["pts"]) * tb - origin, p["data_hash"]) for p in data["packets"]]


def assert_audio_copied_in_sync(out: Path, src: Path, start: float, end: float, *, frame: float = 1024 / 48000) -> None:
    """The clip's audio is one unbroken run of the source's audio packets (stream copy, no
    seam), beginning within one audio frame of `start` and ending within two of `end` in the
    source's clip time. Needs audio whose packets never repeat (e.g. a chirp, not a sine)."""
    source, clip = audio_packets(src), audio_packets(out)
    hashes = [h for _, h in source]
    assert len(set(hashes)) == len(hashes), "the source's audio packets must be distinct for this check"
    assert clip, "the clip has audio"
    first = hashes.index(clip[0][1]) if clip[0][1] in hashes else None
    assert first is not None, "the clip's first audio packet is not one of the source's"
    assert [h for _, h in clip] == hashes[first:first + len(clip)], "the audio is one unbroken run of source packets"
    begin = source[first][0]
    assert abs(float(begin) - start) <= frame + 0.001, f"audio starts at source time {float(begin):.4f}, clip at {start}"
    finish = source[first + len(clip) - 1][0] + Fraction(frame)
    assert abs(float(finish) - end) <= 2 * frame + 0.001, f"audio ends at source time {float(finish):.4f}, clip at {end}"
