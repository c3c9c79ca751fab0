"""Checking an output before it is uploaded: ffmpeg can exit 0 having written an empty or
truncated file, so every clip and thumbnail is probed and compared with what was asked for.

`check_media` is pure (a MediaInfo against expectations -> the list of problems); the
functions that run ffprobe are thin. A missing, empty or unreadable output is a
`TransientError` (disk or I/O trouble is the likely cause and a retry is bounded by
`retry.max_attempts`); an output that is readable but wrong (a stream missing, too short,
wrong size or codec) is a `PermanentError`, since the same command on the same media
would produce it again.
"""

from __future__ import annotations

import json
from pathlib import Path

from clipper.errors import PermanentError, TransientError
from clipper.jobs.command import JobControl, local_input_options, run_command
from clipper.jobs.probe import PROBE_TIMEOUT, MediaInfo, media_info_from_json, probe_media

# Demuxers that may read back what we wrote (our outputs are trusted, but the whitelist stays
# narrow all the same).
OUTPUT_FORMAT_WHITELIST = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,gif,mp3"
IMAGE_FORMAT_WHITELIST = "image2,jpeg_pipe,png_pipe,webp_pipe"


def check_media(
    info: MediaInfo,
    *,
    expect_video: bool,
    expect_audio: bool,
    duration: float | None,
    tolerance: float,
    overshoot: float | None = None,
    width: int | None = None,
    height: int | None = None,
    codec: str | None = None,
    audio_codec: str | None = None,
) -> list[str]:
    """What is wrong with `info` (empty when nothing). `duration` ± `tolerance`; when
    `overshoot` is given it replaces `tolerance` above the expected duration (None in
    `overshoot` with a duration means: the same as tolerance)."""
    problems: list[str] = []
    if expect_video and info.video is None:
        problems.append("no video stream")
    if not expect_video and info.video is not None:
        problems.append(f"an unexpected video stream ({info.video.codec})")
    if expect_audio and info.audio is None:
        problems.append("no audio stream")
    if not expect_audio and info.audio is not None:
        problems.append(f"an unexpected audio stream ({info.audio.codec})")
    if duration is not None:
        above = tolerance if overshoot is None else overshoot
        if info.duration < duration - tolerance or info.duration > duration + above:
            bounds = f"±{tolerance:g}" if above == tolerance else f"-{tolerance:g}/+{above:g}"
            problems.append(f"duration {info.duration:.3f} s vs {duration:.3f} s expected {bounds}")
    v = info.video
    if v is not None:
        if width is not None and v.width != width or height is not None and v.height != height:
            problems.append(f"dimensions {v.width}x{v.height} vs {width or v.width}x{height or v.height} expected")
        if codec is not None and v.codec != codec:
            problems.append(f"video codec {v.codec} vs {codec} expected")
    a = info.audio
    if a is not None and audio_codec is not None and a.codec != audio_codec:
        problems.append(f"audio codec {a.codec} vs {audio_codec} expected")
    return problems


def _check_file(path: Path, what: str) -> None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise TransientError(f"{what}: ffmpeg wrote no output file ({exc.strerror})") from None
    if size == 0:
        raise TransientError(f"{what}: ffmpeg wrote an empty output file")


def verify_output(
    path: Path,
    *,
    expect_video: bool,
    expect_audio: bool,
    duration: float | None,
    tolerance: float,
    width: int | None = None,
    height: int | None = None,
    codec: str | None = None,
    audio_codec: str | None = None,
    overshoot: float | None = None,
    control: JobControl | None = None,
    what: str = "output",
) -> MediaInfo:
    """Probe a clip we wrote and raise unless it has the expected streams, duration,
    dimensions and codecs; returns the probe for the result record."""
    _check_file(path, what)
    try:
        info = probe_media(path, control=control, what=f"check of {what}", format_whitelist=OUTPUT_FORMAT_WHITELIST)
    except PermanentError as exc:
        raise TransientError(f"{what}: the output is unreadable: {exc}") from None
    problems = check_media(info, expect_video=expect_video, expect_audio=expect_audio, duration=duration,
                           tolerance=tolerance, overshoot=overshoot, width=width, height=height, codec=codec,
                           audio_codec=audio_codec)
    if problems:
        raise PermanentError(f"{what}: bad output: {'; '.join(problems)}")
    return info


def verify_image(
    path: Path, *, width: int | None, height: int | None, codec: str, control: JobControl | None = None,
    what: str = "thumbnail",
) -> MediaInfo:
    """Probe an image we wrote (images have no duration, so probe_media does not fit)."""
    _check_file(path, what)
    result = run_command(
        ["ffprobe", "-v", "error", *local_input_options(IMAGE_FORMAT_WHITELIST), "-show_format", "-show_streams",
         "-of", "json", str(path)],
        what=f"check of {what}", timeout=PROBE_TIMEOUT, control=control, capture_stdout=True, check=False,
    )
    try:
        info = media_info_from_json(json.loads(result.stdout or b"{}")) if result.returncode == 0 else None
    except ValueError:
        info = None
    if info is None or info.video is None:
        reason = result.stderr_tail.splitlines()[-1] if result.stderr_tail else "no image stream"
        raise TransientError(f"{what}: the output is unreadable: {reason}")
    problems = check_media(info, expect_video=True, expect_audio=False, duration=None, tolerance=0,
                           width=width, height=height, codec=codec)
    if problems:
        raise PermanentError(f"{what}: bad output: {'; '.join(problems)}")
    return info
