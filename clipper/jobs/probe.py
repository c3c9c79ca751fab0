"""ffprobe: what a media file holds (`MediaInfo`), and where its keyframes are.

Parsing ffprobe's JSON is pure (`media_info_from_json`); the functions that run ffprobe are
thin. Sources are always local files here (fetch downloaded them), so ffprobe gets the
`file`-only protocol whitelist and the demuxer whitelist: a playlist can open nothing.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from clipper.errors import PermanentError
from clipper.media.command import SOURCE_FORMAT_WHITELIST, JobControl, local_input_options, run_command

PROBE_TIMEOUT = 60.0


@dataclass(frozen=True)
class VideoStream:
    index: int
    codec: str
    profile: str | None
    level: int | None
    pix_fmt: str | None
    width: int
    height: int
    fps: Fraction | None
    time_base: Fraction | None
    has_b_frames: int
    field_order: str | None
    frames: int | None
    rotation: int = 0  # display rotation in degrees (0, 90, 180, 270); re-encoding applies it
    sar: Fraction = Fraction(1)  # sample (pixel) aspect ratio; 1 for square pixels
    start_time: float | None = None  # seconds, on the container's clock (see MediaInfo.start_time)
    duration: float | None = None  # seconds, as the stream says


@dataclass(frozen=True)
class AudioStream:
    index: int
    codec: str
    profile: str | None
    sample_rate: int | None
    channels: int | None
    start_time: float | None = None
    duration: float | None = None


@dataclass(frozen=True)
class MediaInfo:
    format_name: str
    duration: float
    size: int | None
    video: VideoStream | None
    audio: AudioStream | None
    video_streams: int
    audio_streams: int
    # The container's start time. ffmpeg's `-ss` and clip times are relative to it; packet
    # timestamps (the keyframe index) are not. 0 for most files, not for e.g. a TS remuxed
    # with -copyts.
    start_time: float = 0.0

    def picture_end(self) -> tuple[float, str]:
        """Where the picture ends, and what to call that in a message: the end of the video
        when the probe knows it, else the end of the media."""
        end = self.video_end
        return (end, "video") if end is not None else (self.duration, "media")

    @property
    def video_end(self) -> float | None:
        """Where the video stream ends, in clip time (relative to start_time), when known:
        a video can end before the container (whose duration is the longest stream's)."""
        v = self.video
        if v is None or v.duration is None:
            return None
        return (v.start_time if v.start_time is not None else self.start_time) + v.duration - self.start_time

    @property
    def codecs(self) -> list[str]:
        return [s.codec for s in (self.video, self.audio) if s is not None]


def _fraction(text: Any) -> Fraction | None:
    try:
        value = Fraction(str(text))
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _rotation(stream: dict[str, Any]) -> int:
    """Display rotation from the display-matrix side data (or the old `rotate` tag), 0..270."""
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            return int(round(_float(side["rotation"]) or 0)) % 360
    return int(round(_float((stream.get("tags") or {}).get("rotate")) or 0)) % 360


MATROSKA_DURATION_RE = re.compile(r"^(\d+):(\d{2}):(\d{2}(?:\.\d+)?)$")


def tag_duration(stream: dict[str, Any]) -> float | None:
    """A Matroska track's DURATION tag ("00:00:05.213000000", any case) in seconds, or None."""
    tags = {k.upper(): v for k, v in (stream.get("tags") or {}).items()}
    m = MATROSKA_DURATION_RE.match(str(tags.get("DURATION", "")).strip())
    return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]) if m else None


def _stream_duration(stream: dict[str, Any]) -> float | None:
    """The stream's own duration. Matroska keeps it only in a `DURATION` tag, which is where the
    stream ends on the file's clock, so its start is taken off."""
    seconds = _float(stream.get("duration"))
    if seconds is not None:
        return seconds
    end = tag_duration(stream)
    return None if end is None else max(0.0, end - (_float(stream.get("start_time")) or 0.0))


def media_info_from_json(data: dict[str, Any]) -> MediaInfo:
    """ffprobe `-show_format -show_streams -of json` -> MediaInfo (pure)."""
    fmt = data.get("format") or {}
    streams = data.get("streams") or []
    videos = [s for s in streams if s.get("codec_type") == "video"
              and not (s.get("disposition") or {}).get("attached_pic")]
    audios = [s for s in streams if s.get("codec_type") == "audio"]
    video = audio = None
    if videos:
        v = videos[0]
        video = VideoStream(
            index=int(v.get("index", 0)), codec=str(v.get("codec_name", "unknown")), profile=v.get("profile"),
            level=_int(v.get("level")), pix_fmt=v.get("pix_fmt"), width=_int(v.get("width")) or 0,
            height=_int(v.get("height")) or 0, fps=_fraction(v.get("avg_frame_rate")) or _fraction(v.get("r_frame_rate")),
            time_base=_fraction(v.get("time_base")), has_b_frames=_int(v.get("has_b_frames")) or 0,
            field_order=v.get("field_order"), frames=_int(v.get("nb_frames")), rotation=_rotation(v),
            sar=_fraction(v.get("sample_aspect_ratio", "1").replace(":", "/")) or Fraction(1),
            start_time=_float(v.get("start_time")), duration=_stream_duration(v),
        )
    if audios:
        a = audios[0]
        audio = AudioStream(index=int(a.get("index", 0)), codec=str(a.get("codec_name", "unknown")),
                            profile=a.get("profile"), sample_rate=_int(a.get("sample_rate")), channels=_int(a.get("channels")),
                            start_time=_float(a.get("start_time")), duration=_stream_duration(a))
    durations = [_float(fmt.get("duration"))] + [_float(s.get("duration")) for s in videos[:1] + audios[:1]]
    duration = next((d for d in durations if d), 0.0)
    return MediaInfo(format_name=str(fmt.get("format_name", "unknown")), duration=duration, size=_int(fmt.get("size")),
                     video=video, audio=audio, video_streams=len(videos), audio_streams=len(audios),
                     start_time=_float(fmt.get("start_time")) or 0.0)


def read_media_info(path: Path, format_whitelist: str, *, what: str,
                    control: JobControl | None = None) -> tuple[MediaInfo | None, str]:
    """ffprobe `-show_format -show_streams` of a local file: (MediaInfo, "") or (None, why not).
    The callers decide what an unreadable file means (a bad source, a bad output)."""
    result = run_command(
        ["ffprobe", "-v", "error", *local_input_options(format_whitelist), "-show_format", "-show_streams", "-of", "json",
         str(path)],
        what=what, timeout=PROBE_TIMEOUT, control=control, capture_stdout=True, check=False,
    )
    if result.returncode != 0:
        return None, result.stderr_tail.splitlines()[-1] if result.stderr_tail else f"ffprobe exit {result.returncode}"
    try:
        return media_info_from_json(json.loads(result.stdout or b"{}")), ""
    except ValueError as exc:
        return None, f"ffprobe output unreadable: {exc}"


def probe_media(path: Path, *, control: JobControl | None = None, what: str = "probe") -> MediaInfo:
    """Run ffprobe on a local source. Not a media file (or no audio/video stream, or no
    duration) is a permanent error: retrying a download will not make it a video."""
    info, reason = read_media_info(path, SOURCE_FORMAT_WHITELIST, what=what, control=control)
    if info is None:
        raise PermanentError(f"{what}: not a media file we accept ({reason})")
    if info.video is None and info.audio is None:
        raise PermanentError(f"{what}: no audio or video stream in the file (format {info.format_name})")
    if info.duration <= 0:
        raise PermanentError(f"{what}: media has no duration (format {info.format_name})")
    return info


@dataclass(frozen=True)
class Packet:
    pts: float
    keyframe: bool


def packets_from_csv(text: str) -> list[Packet]:
    """`-show_entries packet=pts_time,flags -of csv=p=0` lines -> packets sorted by pts (pure)."""
    packets = []
    for line in text.splitlines():
        parts = line.strip().split(",")
        if len(parts) < 2:
            continue
        pts = _float(parts[0])
        if pts is None:
            continue
        packets.append(Packet(pts, "K" in parts[1]))
    packets.sort(key=lambda p: p.pts)
    return packets


def packet_index_csv(path: Path, stream: int, lo: float | None, hi: float, entries: str, *, what: str,
                     control: JobControl | None = None, timeout: float = PROBE_TIMEOUT) -> str:
    """One stream's packets from the keyframe (or position) the demuxer seeks to for `lo`
    (None: the start of the file) up to `hi`, both in packet time, as ffprobe CSV lines of
    `packet=<entries>`. Read from the container's index: `-read_intervals` seeks, so this costs
    ~0.1 s however long the file is (decoding with `-skip_frame nokey` costs ~1 s)."""
    interval = f"{'' if lo is None else f'{max(0.0, lo):.6f}'}%{hi:.6f}"
    result = run_command(
        ["ffprobe", "-v", "error", *local_input_options(), "-select_streams", str(stream), "-read_intervals", interval,
         "-show_entries", f"packet={entries}", "-of", "csv=p=0", str(path)],
        what=what, timeout=timeout, control=control, capture_stdout=True,
    )
    return result.stdout.decode("ascii", "replace")


def video_packets(path: Path, stream: int, start: float, end: float, *, control: JobControl | None = None) -> list[Packet]:
    """Packets (pts, keyframe flag) of video stream `stream` between `start` and `end`."""
    return packets_from_csv(packet_index_csv(path, stream, start, end, "pts_time,flags", what="keyframe index",
                                             control=control))
