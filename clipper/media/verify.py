"""Checking an output before it is uploaded: ffmpeg can exit 0 having written an empty or
truncated file, so every clip and thumbnail is read back and compared with what was asked for.
An MP4/MOV/M4A clip is read from its own index in Python (`mp4index`), a PNG/JPEG/WebP
thumbnail from its header (`imageinfo`): the same values ffprobe gives, without a process start
per output; anything else, or what those readers do not model, is read by ffprobe.

`check_media` is pure (a MediaInfo against expectations -> the list of problems); the
functions that run ffprobe are thin. A missing, empty or unreadable output is a
`TransientError` (disk or I/O trouble is the likely cause and a retry is bounded by
`retry.max_attempts`); an output that is readable but wrong (a stream missing, too short,
wrong size or codec) is a `PermanentError`, since the same command on the same media
would produce it again.

Besides the container's duration, each expected stream's own duration is checked against
how long it should be (`video_duration`, `audio_duration`: what the source has in the clip's
range): the container's duration is the longest stream's, so it hides an audio stream that
lost its first second. Matroska keeps a track's duration only in its DURATION tag, which
the probe (`probe.media_info_from_json`) reads when the stream has no duration of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from clipper.errors import PermanentError, TransientError
from clipper.jobs.probe import MediaInfo, read_media_info
from clipper.media.command import JobControl
from clipper.media.imageinfo import read_image
from clipper.media.isobmff import Broken, Unsure
from clipper.media.mp4index import read_index

# Demuxers that may read back what we wrote (our outputs are trusted, but the whitelist stays
# narrow all the same).
OUTPUT_FORMAT_WHITELIST = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,gif,mp3"
IMAGE_FORMAT_WHITELIST = "image2,jpeg_pipe,png_pipe,webp_pipe"


def _bounds(tolerance: float, above: float) -> str:
    return f"±{tolerance:g}" if above == tolerance else f"-{tolerance:g}/+{above:g}"


def _stream_duration_problem(kind: str, got: float | None, expected: float | None, tolerance: float,
                             above: float) -> str | None:
    if got is None or expected is None or expected - tolerance <= got <= expected + above:
        return None
    off = got - expected
    return (f"{kind} stream lasts {got:.3f} s vs {expected:.3f} s expected {_bounds(tolerance, above)} "
            f"({abs(off):.3f} s {'short' if off < 0 else 'long'})")


def check_media(
    info: MediaInfo,
    *,
    expect_video: bool,
    expect_audio: bool | None,
    duration: float | None,
    tolerance: float,
    overshoot: float | None = None,
    width: int | None = None,
    height: int | None = None,
    codec: str | None = None,
    audio_codec: str | None = None,
    square_pixels: bool = False,
    video_duration: float | None = None,
    audio_duration: float | None = None,
) -> list[str]:
    """What is wrong with `info` (empty when nothing). `expect_audio` None: an audio stream
    may be there or not (the source has no audio in the clip's range). `duration` ± `tolerance`; when
    `overshoot` is given it replaces `tolerance` above the expected duration (None in
    `overshoot` with a duration means: the same as tolerance). `video_duration` and
    `audio_duration` (None: not checked, nor when the output does not say) are checked with
    the same bounds against each stream's own duration; `square_pixels`: a sample aspect
    ratio other than 1:1 is a problem."""
    problems: list[str] = []
    above = tolerance if overshoot is None else overshoot
    if expect_video and info.video is None:
        problems.append("no video stream")
    if not expect_video and info.video is not None:
        problems.append(f"an unexpected video stream ({info.video.codec})")
    if expect_audio and info.audio is None:
        problems.append("no audio stream")
    if expect_audio is False and info.audio is not None:
        problems.append(f"an unexpected audio stream ({info.audio.codec})")
    if duration is not None:
        if info.duration < duration - tolerance or info.duration > duration + above:
            problems.append(f"duration {info.duration:.3f} s vs {duration:.3f} s expected {_bounds(tolerance, above)}")
    v = info.video
    if v is not None:
        if width is not None and v.width != width or height is not None and v.height != height:
            problems.append(f"dimensions {v.width}x{v.height} vs {width or v.width}x{height or v.height} expected")
        if square_pixels and v.sar != 1:
            problems.append(f"sample aspect ratio {v.sar.numerator}:{v.sar.denominator} vs 1:1 expected")
        if codec is not None and v.codec != codec:
            problems.append(f"video codec {v.codec} vs {codec} expected")
        problem = _stream_duration_problem("video", v.duration, video_duration, tolerance, above)
        if problem:
            problems.append(problem)
    a = info.audio
    if a is not None:
        if audio_codec is not None and a.codec != audio_codec:
            problems.append(f"audio codec {a.codec} vs {audio_codec} expected")
        problem = _stream_duration_problem("audio", a.duration, audio_duration, tolerance, above)
        if problem:
            problems.append(problem)
    return problems


def _check_file(path: Path, what: str) -> None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise TransientError(f"{what}: ffmpeg wrote no output file ({exc.strerror})") from None
    if size == 0:
        raise TransientError(f"{what}: ffmpeg wrote an empty output file")


def read_back(path: Path, reader: Callable[[Path], MediaInfo], whitelist: str, *, control: JobControl | None,
              what: str) -> tuple[MediaInfo | None, str]:
    """What an output we wrote holds: from `reader` (its own index or header, no process) when
    it can say, else from ffprobe with these demuxers. (None, why) when it is unreadable."""
    try:
        return reader(path), ""
    except Broken as exc:
        return None, str(exc)
    except Unsure:
        return read_media_info(path, whitelist, what=f"check of {what}", control=control)


def read_output_info(path: Path, *, control: JobControl | None, what: str,
                     need_sar: bool = False) -> tuple[MediaInfo | None, str]:
    """A clip we wrote: from its MP4 index (`mp4index`), else ffprobe."""
    return read_back(path, lambda p: read_index(p, need_sar=need_sar), OUTPUT_FORMAT_WHITELIST, control=control,
                     what=what)


def probe_output(path: Path, *, control: JobControl | None, what: str, need_sar: bool = False) -> MediaInfo:
    """Read an output we wrote back; unreadable (no stream, no duration) is a TransientError."""
    info, reason = read_output_info(path, control=control, what=what, need_sar=need_sar)
    if info is not None and info.video is None and info.audio is None:
        info, reason = None, "no audio or video stream"
    if info is not None and info.duration <= 0:
        info, reason = None, "no duration"
    if info is None:
        raise TransientError(f"{what}: the output is unreadable: {reason}")
    return info


def verify_output(
    path: Path,
    *,
    explain_overshoot: Callable[[], float] | None = None,
    control: JobControl | None = None,
    what: str = "output",
    **expected: Any,
) -> MediaInfo:
    """Probe a clip we wrote and raise unless it is what `expected` (the keyword arguments of
    `check_media`) describes: streams, durations (the container's and, when given, each
    stream's), dimensions and codecs; returns the probe for the result record.
    `explain_overshoot`: asked only when the output is off, for seconds it may run longer than
    `overshoot` allows (a copy clip's keyframe lead-in, which costs a read of the packet index:
    not worth it for the usual output that is on time)."""
    _check_file(path, what)
    info = probe_output(path, control=control, what=what, need_sar=bool(expected.get("square_pixels")))
    problems = check_media(info, **expected)
    if problems and explain_overshoot is not None:
        allowed = (expected.get("overshoot") or expected["tolerance"]) + explain_overshoot()
        problems = check_media(info, **{**expected, "overshoot": allowed})
    if problems:
        raise PermanentError(f"{what}: bad output: {'; '.join(problems)}")
    return info


def verify_image(
    path: Path, *, width: int | None, height: int | None, codec: str, control: JobControl | None = None,
    what: str = "thumbnail",
) -> MediaInfo:
    """Read an image we wrote back from its header (`imageinfo`), or with ffprobe when that
    cannot say (images have no duration, so probe_output does not fit)."""
    _check_file(path, what)
    info, reason = read_back(path, read_image, IMAGE_FORMAT_WHITELIST, control=control, what=what)
    if info is None or info.video is None:
        raise TransientError(f"{what}: the output is unreadable: {reason or 'no image stream'}")
    problems = check_media(info, expect_video=True, expect_audio=False, duration=None, tolerance=0,
                           width=width, height=height, codec=codec, square_pixels=True)
    if problems:
        raise PermanentError(f"{what}: bad output: {'; '.join(problems)}")
    return info
