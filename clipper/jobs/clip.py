"""The clip stage: one ClipSpec -> one verified file, in mode copy, accurate or smart.

Command builders are pure (`build_copy_command`, `build_encode_command`, `scaled_size`,
`plan_seek`) and unit-tested for their exact argv; `make_clip` runs one and verifies the
output before returning it.

Seeking (`plan_seek`): normally on the input side (`-ss` before `-i`): ffmpeg then jumps
through the index instead of decoding everything before the cut. But an input-side seek lands
every stream on the file position of the video keyframe at or before `start`; when there is
none (the video starts after the audio and `start` is before the first video frame) it lands
on the first keyframe and the audio before it is lost. So a clip from 0 gets no `-ss` at all,
and a clip starting before the first video frame seeks on the output side (ffmpeg reads from
the beginning of the file, which is at most up to that first frame).

Seeking for a re-encode (`accurate_seek`, pure part `plan_accurate_seek`): an input-side seek
to `start` itself is not exact. The MP4 demuxer lands on the keyframe whose DTS is at or
before the target, and in an MP4 with B-frames and no edit list that keyframe is shown after
`start`: the frames shown before it are lost. Matroska and other demuxers without
`AVFMT_SEEK_TO_PTS` aim 3/23 s early (DTS_SEEK_SHIFT), and MPEG-TS/PS find a file position by
bisection, where decoding resumes only at the next keyframe (a whole GOP can be lost). So the
encode decodes from the keyframe at or before `start`, read from the packet index
(`find_keyframe_before`, ~0.1 s), and trims exactly with an output-side `-ss`: input-side
`-ss` where each demuxer lands on that keyframe (`keyframe_seek_target`), output-side `-ss`
the rest of the way to `start`. Both streams are trimmed at the same time, so the audio starts
at `start` as before. The cost: one ffprobe (more only when the first reads find no keyframe,
e.g. a TS with long GOPs), and decoding from that keyframe, which the decoder needs anyway;
a GOP more where the demuxer cannot be aimed at the keyframe itself (bisecting demuxers, a
cut within 3/23 s after a Matroska keyframe, a cut on a keyframe of video without B-frames).
GIFs are trimmed inside their filter graph (`trim`, `setpts`) instead, so the palette and the
frame-rate conversion see only the clip.

What players see in `copy` mode: stream copy can only start on a keyframe, so the output
begins at the keyframe at or before `start`, at most one GOP early, and `-t` ends it at
`end` (it may overshoot by a couple of frames). In MP4/M4A the muxer writes an edit list
that hides that lead-in: players that honour edit lists (ffmpeg, browsers, QuickTime, VLC)
start exactly at `start` and report the requested duration; the few that ignore edit lists
show up to one GOP of earlier content first. We never pass `-avoid_negative_ts make_zero`,
which would make the lead-in visible everywhere. Matroska has no edit lists, so an MKV copy
clip shows the lead-in and lasts longer than asked by exactly that much. Verification allows
that lead-in, measured on the source's packet index (`copy_lead_in`), plus COPY_TOLERANCE;
a long GOP is never rejected, an output longer than its own lead-in explains is.
Use `smart` or `accurate` for frame-exact clips.

Which frames a frame-exact clip holds: those with start <= pts < end, where a frame within
BOUNDARY_SLACK (0.5 ms) of `start` or `end` counts as being at it: times such as 7/30 s cannot
be written exactly in decimal, and "start at 0.2333" means the frame at 0.23333... The
accurate encode gets this by trimming at `start - slack` with the same duration, and by
encoding in the source's time base (`-enc_time_base:v -1`): with the default 1/fps encoder
time base, frame times are rounded onto that grid before `-t` applies, so when `start` falls
between frames the frame at `end` would get in. The smart cut plans with the same rule.

Range rules (`resolve_range`): a format with video ends where the video ends
(`MediaInfo.video_end`; the container's duration is the longest stream's, and audio may run
on after the picture); audio-only formats end at the end of the media. A clip starting at or
past that end or after the last video frame, or (with video) ending before the first, is a
PermanentError; an end past it is clamped (the clip is as long as the media allows) and
`ClipResult.note` says so. A source whose audio is shorter than the clip gives a clip whose
audio is as long as the source has in that range (verified per stream).

Pictures: output sizes are computed on the displayed picture (rotation and the sample aspect
ratio applied, `display_size`), and every scaled picture gets `setsar=1`, so outputs have
square pixels (GIF players ignore the aspect ratio, and many thumbnail consumers do too). A
GIF's longer side is capped by `media.gif_max_width` (the name predates portrait sources: it
is the maximum side).

Threads: `threads` (`workers.ffmpeg_threads`) bounds the decoder (input-side `-threads`), the
filter graph (`-filter_complex_threads`; ffmpeg-python always writes `-filter_complex`, which
`-filter_threads` does not reach) and the encoder (output-side `-threads`). 0: ffmpeg's choice.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg

from clipper.errors import PermanentError
from clipper.jobs.command import JobControl, ffmpeg_base, local_input_options, run_command, run_ffmpeg
from clipper.jobs.probe import PROBE_TIMEOUT, MediaInfo, Packet, VideoStream, video_packets
from clipper.jobs.spec import ClipSpec
from clipper.jobs.verify import verify_output
from clipper.settings import MediaSettings

EXTENSIONS: dict[str, str] = {"mp4": "mp4", "mkv": "mkv", "webm": "webm", "gif": "gif", "m4a": "m4a", "mp3": "mp3"}
MUXERS: dict[str, str] = {"mp4": "mp4", "mkv": "matroska", "webm": "webm", "gif": "gif", "m4a": "ipod", "mp3": "mp3"}
FASTSTART_FORMATS = frozenset({"mp4", "m4a"})

# Codecs each container takes as they are (stream copy); anything else must be re-encoded.
COPY_VIDEO_CODECS: dict[str, frozenset[str]] = {
    "mp4": frozenset({"h264", "hevc", "av1", "vp9", "mpeg4"}),
    "mkv": frozenset({"h264", "hevc", "av1", "vp8", "vp9", "mpeg4", "mpeg2video", "theora"}),
}
COPY_AUDIO_CODECS: dict[str, frozenset[str]] = {
    "mp4": frozenset({"aac", "mp3", "opus", "ac3", "eac3", "alac", "flac"}),
    "mkv": frozenset({"aac", "mp3", "opus", "vorbis", "ac3", "eac3", "flac", "alac", "pcm_s16le", "pcm_s24le"}),
    "m4a": frozenset({"aac"}),
}

BOUNDARY_SLACK = 0.0005  # seconds; far below any frame interval (see module doc)

# How far a copy clip's duration may be from the request besides its keyframe lead-in: `-t`
# overshoots by a couple of frames, and MKV delays the video by the B-frame reorder depth.
COPY_TOLERANCE = 0.5
# ffmpeg (ffmpeg_opt.c) aims an input-side seek 3/23 s earlier in containers that seek by DTS
# (all but the MP4 family, which seek by PTS) when the video has B-frames, so a copy there can
# start on the keyframe before the one at/before `start`.
DTS_SEEK_SHIFT = 3 / 23
PTS_SEEKING_FORMATS = ("mov", "mp4")
# Demuxers that seek on an index of keyframes by their PTS (Matroska cues); the other
# non-MP4 demuxers (MPEG-TS/PS, ...) may find a position by bisection on DTS.
KEYFRAME_INDEX_FORMATS = ("matroska", "webm")
# A re-encode's keyframe lookup: the packet index read from this far before `start` at first,
# four times further each time it holds no keyframe at/before `start`, and this far past it.
KEYFRAME_INDEX_LEAD = 1.0
KEYFRAME_INDEX_TAIL = 0.5
# How far past the keyframe an indexed demuxer is aimed: more than the rounding of packet
# times (printed in microseconds) and of the target (to a millisecond), since a keyframe's
# DTS equals its PTS without B-frames ...
KEYFRAME_AIM_PAST = 0.002
# ... and how far before it one that bisects: more than the B-frame reorder delay (the
# keyframe's DTS is before its PTS) and the audio interleaving around it.
BISECT_PREROLL = 1.0


@dataclass(frozen=True)
class ClipResult:
    path: Path  # the verified output file in out_dir, named f"{clip.name}.{ext}"
    info: MediaInfo  # ffprobe of the output
    mode: str  # mode actually used ("copy" | "accurate" | "smart")
    note: str | None  # e.g. why smart fell back to accurate, or that the end was clamped


@dataclass(frozen=True)
class ClipRange:
    """A clip's range resolved against the media: the end clamped to its duration."""

    start: float
    end: float
    note: str | None

    @property
    def duration(self) -> float:
        return self.end - self.start


def clip_label(clip: ClipSpec) -> str:
    return f"clip ({clip.name})"


def media_end(clip: ClipSpec, source: MediaInfo) -> tuple[float, str]:
    """Where this clip's media ends and what to call it: the end of the video for formats
    with video (when the probe knows it), else the end of the media."""
    if not clip.audio_only and source.video_end is not None:
        return source.video_end, "video"
    return source.duration, "media"


def resolve_range(clip: ClipSpec, source: MediaInfo) -> ClipRange:
    """Start at/after the end (see `media_end`), after the last video frame, or an end before
    the first (no frame would be in the clip): permanent error. End past the end: clamped,
    with a note."""
    limit, what = media_end(clip, source)
    if clip.start >= limit:
        raise PermanentError(f"{clip_label(clip)}: start {clip.start:g} s is past the end of the {what} "
                             f"({limit:.3f} s)")
    if what == "video" and clip.end <= first_video_time(source) + BOUNDARY_SLACK:
        raise PermanentError(f"{clip_label(clip)}: end {clip.end:g} s is before the video starts "
                             f"({first_video_time(source):.3f} s)")
    fps = source.video.fps if source.video else None
    if what == "video" and fps:
        last = limit - 1 / float(fps)  # estimated from the frame rate: exact for constant-rate video
        if clip.start > last + BOUNDARY_SLACK:
            raise PermanentError(f"{clip_label(clip)}: start {clip.start:g} s is after the last video frame "
                                 f"(at {last:.3f} s; the video ends at {limit:.3f} s)")
    if clip.end > limit:
        note = f"end {clip.end:g} s is past the end of the {what}; clamped to {limit:.3f} s"
        return ClipRange(clip.start, limit, note)
    return ClipRange(clip.start, clip.end, None)


def check_streams(clip: ClipSpec, source: MediaInfo) -> None:
    """The streams the format needs must be in the source (permanent otherwise)."""
    if clip.audio_only and source.audio is None:
        raise PermanentError(f"{clip_label(clip)}: format {clip.format} needs audio, the source has none")
    if not clip.audio_only and source.video is None:
        raise PermanentError(f"{clip_label(clip)}: format {clip.format} needs video, the source is audio only")


def copy_obstacle(clip: ClipSpec, source: MediaInfo) -> str | None:
    """Why this source cannot be stream-copied into the clip's format, or None."""
    fmt = clip.format
    if fmt not in COPY_AUDIO_CODECS:
        return f"format {fmt} needs re-encoding"
    if clip.resized:
        return "a resize needs re-encoding"
    if fmt == "m4a":
        if source.audio is not None and source.audio.codec != "aac":
            return f"m4a copy needs AAC audio, the source has {source.audio.codec}"
        return None
    if source.video is not None and source.video.codec not in COPY_VIDEO_CODECS[fmt]:
        return f"{fmt} cannot hold {source.video.codec} video as it is"
    if source.audio is not None and source.audio.codec not in COPY_AUDIO_CODECS[fmt]:
        return f"{fmt} cannot hold {source.audio.codec} audio as it is"
    return None


# -- scaling ---------------------------------------------------------------------------------

def _even(x: float, limit: int | None = None) -> int:
    """Nearest even integer >= 2, and not above `limit` (rounded down to even) when given."""
    n = max(2, 2 * math.floor(x / 2 + 0.5))
    if limit is not None:
        n = min(n, max(2, limit - limit % 2))
    return n


def scaled_size(src_w: int, src_h: int, *, width: int | None = None, height: int | None = None,
                max_side: int | None = None, max_width: int | None = None, upscale: bool = False,
                cap_side: int | None = None) -> tuple[int, int]:
    """Output size keeping the aspect ratio. Targets: `width` and/or `height` (both: fit
    inside the box), `max_side` (the longer side); the smallest scale they ask for wins.
    Caps that never enlarge: `max_width`, `cap_side` (the longer side; gif) and, unless
    `upscale`, the source size. Both sides even (4:2:0 chroma needs it) and never above any
    bound."""
    targets = [t for t in (width and width / src_w, height and height / src_h,
                           max_side and max_side / max(src_w, src_h)) if t]
    scale = min(targets) if targets else 1.0
    if max_width:
        scale = min(scale, max_width / src_w)
    if cap_side:
        scale = min(scale, cap_side / max(src_w, src_h))
    if not upscale:
        scale = min(scale, 1.0)
    w_bounds = [b for b in (width, max_side, max_width, cap_side) if b] + ([] if upscale else [src_w])
    h_bounds = [b for b in (height, max_side, cap_side) if b] + ([] if upscale else [src_h])
    return (_even(src_w * scale, min(w_bounds) if w_bounds else None),
            _even(src_h * scale, min(h_bounds) if h_bounds else None))


def pixel_size(video: VideoStream) -> tuple[int, int]:
    """Width and height of the decoded frames as the filter graph gets them: ffmpeg rotates
    frames by the display matrix when it re-encodes, so a 90°/270° source has its sides swapped."""
    if video.rotation % 180 == 90:
        return video.height, video.width
    return video.width, video.height


def display_size(video: VideoStream) -> tuple[int, int]:
    """Width and height as displayed, in square pixels: the width stretched by the sample
    aspect ratio (720x480 at 32:27 shows as 853x480, 16:9), then the rotation applied."""
    width = max(1, round(video.width * Fraction(video.sar)))
    if video.rotation % 180 == 90:
        return video.height, width
    return width, video.height


def needs_scale(video: VideoStream, w: int, h: int) -> bool:
    """Whether frames must go through `scale` (+ `setsar=1`) to come out w x h, square pixels."""
    return (w, h) != pixel_size(video) or video.sar != 1


def output_size(clip: ClipSpec, video: VideoStream, media: MediaSettings) -> tuple[int, int]:
    w, h = display_size(video)
    cap_side = media.gif_max_width if clip.format == "gif" else None  # the longer side (module doc)
    return scaled_size(w, h, width=clip.width, height=clip.height, max_side=clip.max, cap_side=cap_side,
                       upscale=clip.upscale)


# -- command builders (pure) -----------------------------------------------------------------

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


@dataclass(frozen=True)
class Seek:
    """Where a command seeks, in seconds: `input` (before `-i`, clip time) and/or `output`
    (after it, relative to `input`): the frames decoded from `input` are dropped up to
    `input + output`."""

    input: float | None
    output: float | None


def first_video_time(source: MediaInfo) -> float:
    """Clip time of the first video frame (0 when unknown or audio only)."""
    v = source.video
    if v is None or v.start_time is None:
        return 0.0
    return max(0.0, v.start_time - source.start_time)


def plan_seek(source: MediaInfo, start: float) -> Seek:
    """No seek from 0; output-side before the first video frame, input-side otherwise (see
    the module doc: an input-side seek there would lose the audio before the video)."""
    if start <= 0:
        return Seek(None, None)
    if start < first_video_time(source):
        return Seek(None, start)
    return Seek(start, None)


def _container(source: MediaInfo, names: tuple[str, ...]) -> bool:
    return any(f in source.format_name.split(",") for f in names)


def keyframe_seek_target(source: MediaInfo, keyframe: float) -> float:
    """The input-side `-ss` (clip time) at which ffmpeg's demuxer starts on the keyframe at
    `keyframe` or an earlier one (pure). MP4 lands on the last keyframe whose DTS is at or
    before the target (a keyframe's DTS is at or before its PTS); Matroska on the last whose
    PTS is, after ffmpeg took DTS_SEEK_SHIFT off (with B-frames); other demuxers may bisect
    on DTS and resume decoding at the next keyframe after the position they find, so they are
    aimed BISECT_PREROLL before it."""
    if _container(source, PTS_SEEKING_FORMATS):
        return keyframe + KEYFRAME_AIM_PAST
    if _container(source, KEYFRAME_INDEX_FORMATS):
        return keyframe + KEYFRAME_AIM_PAST + seek_shift(source)
    return keyframe - BISECT_PREROLL


def seek_shift(source: MediaInfo) -> float:
    """How much earlier than `-ss` ffmpeg aims an input-side seek (see DTS_SEEK_SHIFT)."""
    v = source.video
    if _container(source, PTS_SEEKING_FORMATS) or v is None or not v.has_b_frames:
        return 0.0
    return DTS_SEEK_SHIFT


def plan_accurate_seek(source: MediaInfo, start: float, keyframe: float | None) -> Seek:
    """The seek of a re-encode from `start` (clip time), given the clip time of the last
    video keyframe at or before it (None: none found) (pure; module doc). As `plan_seek` from
    0 and before the first video frame; otherwise input-side where the demuxer lands on that
    keyframe, output-side the rest of the way to `start`; the two add up to `start` exactly
    (in microseconds, as ffmpeg reads them). From the file start when no keyframe is known,
    or when the keyframe is at the start of the video anyway."""
    seek = plan_seek(source, start)
    if seek.input is None or source.video is None:
        return seek
    if keyframe is None:
        return Seek(None, start)
    start_us = round(start * 1_000_000)
    # a whole millisecond: exact in the usual time bases (1/1000, 1/90000, ...), so ffmpeg's
    # rounding of the two seeks onto the stream's clock adds no error to the one of `start`
    aim_us = min(round(keyframe_seek_target(source, keyframe) * 1_000_000) // 1000 * 1000, start_us)
    if aim_us <= round(first_video_time(source) * 1_000_000):
        return Seek(None, start)
    skip_us = start_us - aim_us
    return Seek(aim_us / 1_000_000, skip_us / 1_000_000 if skip_us > 0 else None)


def ffmpeg_argv(*streams: object, out: Path, **kwargs: object) -> list[str]:
    return [*ffmpeg_base(), *ffmpeg.output(*streams, str(out), **kwargs).get_args()]


def build_copy_command(src: Path, source: MediaInfo, fmt: str, start: float, duration: float, out: Path) -> list[str]:
    """Stream copy of the first video and first audio stream (by index, so cover art that
    ffprobe lists as a video stream is never picked), keyframe-aligned (see module doc)."""
    seek = plan_seek(source, start)
    inp = seek_input(src, seek.input)
    streams = []
    if source.video is not None and fmt != "m4a":
        streams.append(inp[str(source.video.index)])
    if source.audio is not None:
        streams.append(inp[str(source.audio.index)])
    opts: dict[str, object] = {"c": "copy", "t": seconds_arg(duration), "format": MUXERS[fmt]}
    if seek.output is not None:
        opts["ss"] = seconds_arg(seek.output)
    if fmt in FASTSTART_FORMATS:
        opts["movflags"] = "+faststart"
    if fmt == "mp4" and source.video is not None and source.video.codec == "hevc" and fmt != "m4a":
        opts["tag:v"] = "hvc1"  # Apple players refuse the default hev1 tag
    return ffmpeg_argv(*streams, out=out, **opts)


def video_encoder_options(fmt: str, media: MediaSettings) -> dict[str, object]:
    if fmt == "webm":
        # realtime/cpu-used 8: ~10x faster than the default "good" deadline, fine for clips
        return {"c:v": "libvpx-vp9", "crf": media.vp9_crf, "b:v": 0, "deadline": "realtime", "cpu-used": 8,
                "row-mt": 1, "pix_fmt": "yuv420p"}
    # yuv420p: 10-bit or 4:4:4 sources would otherwise give profiles browsers cannot play
    return {"c:v": "libx264", "preset": media.x264_preset, "crf": media.x264_crf, "pix_fmt": "yuv420p"}


def audio_encoder_options(fmt: str, media: MediaSettings) -> dict[str, object]:
    codec = {"webm": "libopus", "mp3": "libmp3lame"}.get(fmt, "aac")
    return {"c:a": codec, "b:a": media.audio_bitrate}


def build_encode_command(src: Path, source: MediaInfo, clip: ClipSpec, start: float, duration: float,
                         media: MediaSettings, out: Path, *, threads: int = 0, seek: Seek | None = None) -> list[str]:
    """Re-encode `duration` seconds from `start` (frame-exact) into the clip's format. `seek`:
    from `accurate_seek` (None: `plan_seek`, exact only where the demuxer lands at or before
    `start`, see the module doc)."""
    fmt = clip.format
    if seek is None:
        seek = plan_seek(source, start)
    inp = seek_input(src, seek.input, threads=threads)
    opts: dict[str, object] = {"t": seconds_arg(duration), "format": MUXERS[fmt]}
    if seek.output is not None and fmt != "gif":
        opts["ss"] = seconds_arg(seek.output)
    streams = []
    filtered = False
    if not clip.audio_only:
        assert source.video is not None
        video = inp[str(source.video.index)]
        w, h = output_size(clip, source.video, media)
        if fmt == "gif":
            if seek.output is not None:
                # trimmed (and its times made clip times) before the palette and the frame rate see it
                skip = seconds_arg(seek.output)
                video = video.filter("trim", start=skip).filter("setpts", f"PTS-{skip}/TB")
            # one graph: the palette is computed from the clip itself, then applied
            video = video.filter("fps", media.gif_fps).filter("scale", w, h, flags="lanczos").filter("setsar", 1)
            split = video.split()
            palette = split[0].filter("palettegen", stats_mode="diff")
            video = ffmpeg.filter([split[1], palette], "paletteuse", dither="bayer", bayer_scale=5)
            filtered = True
        else:
            if needs_scale(source.video, w, h):
                video = video.filter("scale", w, h).filter("setsar", 1)
                filtered = True
            opts.update(video_encoder_options(fmt, media))
        # the source's time base, not 1/fps: frame times must not be rounded before -t (module doc)
        opts["enc_time_base:v"] = -1
        # never duplicate or drop frames to fit a constant rate (the mp4 default): a source
        # whose video starts after its audio would get a duplicated first frame
        opts["fps_mode"] = "passthrough"
        streams.append(video)
    if source.audio is not None and fmt != "gif":
        streams.append(inp[str(source.audio.index)])
        opts.update(audio_encoder_options(fmt, media))
    if fmt in FASTSTART_FORMATS:
        opts["movflags"] = "+faststart"
    opts.update(output_thread_options(threads, filtered=filtered))
    return ffmpeg_argv(*streams, out=out, **opts)


def output_thread_options(threads: int, *, filtered: bool) -> dict[str, object]:
    """Output-side thread bounds (the decoder's is on the input, see `seek_input`)."""
    if threads <= 0:
        return {}
    opts: dict[str, object] = {"threads": threads}
    if filtered:
        opts["filter_complex_threads"] = threads  # a global option: ffmpeg takes it anywhere
    return opts


# -- running ---------------------------------------------------------------------------------

def expected_codecs(fmt: str, mode: str, source: MediaInfo) -> tuple[str | None, str | None]:
    """(video codec, audio codec) the output must have."""
    if mode == "copy":
        return (source.video.codec if source.video and fmt != "m4a" else None,
                source.audio.codec if source.audio else None)
    video = {"webm": "vp9", "gif": "gif"}.get(fmt, "h264")
    audio = {"webm": "opus", "mp3": "mp3"}.get(fmt, "aac")
    return (None if fmt in ("m4a", "mp3") else video, None if fmt == "gif" else audio)


def frame_tolerance(source: MediaInfo, fmt: str, media: MediaSettings) -> float:
    """How far a frame-exact clip's duration may be from the request: a video frame (gif: one
    gif frame) plus an audio frame or two (AAC frames are 21 ms, plus encoder priming)."""
    fps = source.video.fps if source.video and source.video.fps else 25
    frame = 1 / media.gif_fps if fmt == "gif" else 1 / float(fps)
    return frame + 0.06


def copy_seek_target(source: MediaInfo, start: float) -> float:
    """Where ffmpeg aims an input-side seek for `start` (see DTS_SEEK_SHIFT)."""
    return start - seek_shift(source)


def lead_in_from_packets(packets: list[Packet], target: float, start: float) -> float:
    """Seconds from the keyframe a copy cut lands on (the last at/before `target`; the first
    keyframe when none is) to `start`; all on the packets' clock (pure)."""
    keys = [p.pts for p in packets if p.keyframe]
    before = [k for k in keys if k <= target + BOUNDARY_SLACK]
    key = max(before) if before else (keys[0] if keys and keys[0] <= start else None)
    return max(0.0, start - key) if key is not None else 0.0


def keyframes_from_csv(text: str) -> list[float]:
    """`-show_entries packet=pts_time,dts_time,flags -of csv=p=0` lines -> the keyframes' times:
    their PTS, or their DTS where the container stores no PTS (AVI) (pure)."""
    times = []
    for line in text.splitlines():
        parts = line.strip().split(",")
        if len(parts) < 3 or "K" not in parts[2]:
            continue
        for field in parts[:2]:
            try:
                times.append(float(field))
                break
            except ValueError:  # N/A
                continue
    return times


def read_keyframes(src: Path, stream: int, lo: float, hi: float, *, control: JobControl) -> list[float]:
    """Keyframe times (`keyframes_from_csv`) of one stream from the packet index, reading from
    the keyframe (or position) the demuxer seeks to for `lo` up to `hi`, in packet time."""
    result = run_command(
        ["ffprobe", "-v", "error", *local_input_options(), "-select_streams", str(stream),
         "-read_intervals", f"{max(0.0, lo):.6f}%{hi:.6f}", "-show_entries", "packet=pts_time,dts_time,flags",
         "-of", "csv=p=0", str(src)],
        what="keyframe index", timeout=PROBE_TIMEOUT, control=control, capture_stdout=True,
    )
    return keyframes_from_csv(result.stdout.decode("ascii", "replace"))


def keyframe_before(keyframes: list[float], target: float) -> float | None:
    """The last keyframe time at or before `target` (within BOUNDARY_SLACK), or None (pure)."""
    before = [k for k in keyframes if k <= target + BOUNDARY_SLACK]
    return max(before) if before else None


def find_keyframe_before(src: Path, source: MediaInfo, start: float, *, control: JobControl) -> float | None:
    """Clip time of the last video keyframe at or before `start` (clip time), from the packet
    index (~0.1 s a read): read from KEYFRAME_INDEX_LEAD before `start`, then four times
    further back while what was read holds none, until a read starts with the video. None
    when even that finds none."""
    v = source.video
    assert v is not None
    target = start + source.start_time  # packet times are on the container clock
    video_start = v.start_time if v.start_time is not None else source.start_time
    lead = KEYFRAME_INDEX_LEAD
    while True:
        lo = target - lead
        key = keyframe_before(read_keyframes(src, v.index, lo, target + KEYFRAME_INDEX_TAIL, control=control), target)
        if key is not None:
            return key - source.start_time
        if lo <= max(video_start, 0.0):  # this read started with the video
            return None
        lead *= 4


def accurate_seek(src: Path, source: MediaInfo, start: float, *, control: JobControl) -> Seek:
    """Where a frame-exact re-encode from `start` (clip time) seeks (module doc); reads the
    packet index only when the seek is on the input side."""
    if source.video is None or plan_seek(source, start).input is None:
        return plan_seek(source, start)
    return plan_accurate_seek(source, start, find_keyframe_before(src, source, start, control=control))


def copy_lead_in(src: Path, source: MediaInfo, start: float, *, control: JobControl) -> float:
    """The lead-in a copy clip from `start` carries (module doc), from the packet index
    (~0.1 s); 0 when the copy does not seek on the input side."""
    if source.video is None or plan_seek(source, start).input is None:
        return 0.0
    target = copy_seek_target(source, start) + source.start_time  # packet times are on the container clock
    packets = video_packets(src, target, start + source.start_time + 0.1, control=control)
    return lead_in_from_packets(packets, target, start + source.start_time)


def covered(stream_start: float | None, stream_duration: float | None, source: MediaInfo, start: float,
            end: float) -> float | None:
    """Seconds of [start, end) (clip time) a source stream covers; None when unknown."""
    if stream_duration is None:
        return None
    first = (stream_start if stream_start is not None else source.start_time) - source.start_time
    return max(0.0, min(end, first + stream_duration) - max(start, first))


def expected_stream_lengths(source: MediaInfo, start: float, end: float) -> tuple[float | None, float | None]:
    """(video, audio): how long each output stream must be, i.e. how much of the range the
    source's stream covers, so a source whose audio is shorter than the clip is no failure."""
    v, a = source.video, source.audio
    return (covered(v.start_time, v.duration, source, start, end) if v else None,
            covered(a.start_time, a.duration, source, start, end) if a else None)


def finish(tmp: Path, final: Path) -> Path:
    os.replace(tmp, final)
    return final


def make_clip(src: Path, source: MediaInfo, clip: ClipSpec, out_dir: Path, media: MediaSettings, *,
              threads: int, control: JobControl, timeout: float) -> ClipResult:
    """Produce `<out_dir>/<name>.<ext>`, verified with ffprobe; raises PermanentError for
    requests this media cannot meet, TransientError for a killed or timed-out ffmpeg."""
    rng = resolve_range(clip, source)
    check_streams(clip, source)
    final = out_dir / f"{clip.name}.{EXTENSIONS[clip.format]}"
    # ffmpeg writes under a name no clip can have (names never start with "."); the file gets
    # its real name only once verified, so a failed attempt never leaves a plausible output.
    tmp = out_dir / f".{clip.name}.part.{EXTENSIONS[clip.format]}"
    notes = [rng.note] if rng.note else []
    mode = clip.mode
    try:
        if mode == "copy":
            obstacle = copy_obstacle(clip, source)
            if obstacle and clip.mode_was_explicit:
                raise PermanentError(f"{clip_label(clip)}: mode copy is impossible: {obstacle}; use mode accurate")
            if obstacle:
                notes.append(f"copy impossible ({obstacle}); re-encoded")
                mode = "accurate"
        if mode == "smart":
            # imported here: smartcut builds on this module's command helpers
            from clipper.jobs.smartcut import SmartCutFallback, make_smart_clip

            try:
                info = make_smart_clip(src, source, clip, rng.start, rng.end, tmp, media, threads=threads,
                                       control=control, timeout=timeout)
                return ClipResult(finish(tmp, final), info, "smart", "; ".join(notes) or None)
            except SmartCutFallback as why:
                notes.append(f"smart cut not possible ({why}); re-encoded the whole clip")
                mode = "accurate"
        if mode == "copy":
            cmd = build_copy_command(src, source, clip.format, rng.start, rng.duration, tmp)
            run_ffmpeg(cmd, what=f"{clip_label(clip)} copy", timeout=timeout, control=control)
            lead_in = copy_lead_in(src, source, rng.start, control=control)
            tolerance, overshoot = COPY_TOLERANCE, lead_in + COPY_TOLERANCE
        else:
            begin = max(0.0, rng.start - BOUNDARY_SLACK)
            seek = accurate_seek(src, source, begin, control=control)
            cmd = build_encode_command(src, source, clip, begin, rng.duration, media, tmp, threads=threads, seek=seek)
            run_ffmpeg(cmd, what=f"{clip_label(clip)} encode", timeout=timeout, control=control)
            tolerance, overshoot = frame_tolerance(source, clip.format, media), None
        vcodec, acodec = expected_codecs(clip.format, mode, source)
        reencoded = mode != "copy" and vcodec is not None
        size = output_size(clip, source.video, media) if reencoded else (None, None)
        video_len, audio_len = expected_stream_lengths(source, rng.start, rng.end)
        expect_audio: bool | None = acodec is not None and source.audio is not None
        if expect_audio and audio_len is not None and audio_len <= tolerance:
            expect_audio = None  # the source's audio ends before the clip (or starts after it)
        info = verify_output(
            tmp, expect_video=vcodec is not None, expect_audio=expect_audio,
            duration=rng.duration, tolerance=tolerance, overshoot=overshoot, width=size[0], height=size[1],
            codec=vcodec, audio_codec=acodec if source.audio else None, square_pixels=reencoded,
            video_duration=video_len if vcodec else None, audio_duration=audio_len if acodec else None,
            control=control, what=clip_label(clip),
        )
        return ClipResult(finish(tmp, final), info, mode, "; ".join(notes) or None)
    finally:
        tmp.unlink(missing_ok=True)
