"""The clip stage: one ClipSpec -> one verified file, in mode copy, accurate or smart.

Command builders are pure (`build_copy_command`, `build_encode_command`, `scaled_size`) and
unit-tested for their exact argv; `make_clip` runs one and verifies the output before
returning it. Every command seeks on the input side (`-ss` before `-i`): ffmpeg then jumps
through the index instead of decoding everything before the cut, and with re-encoding it
still drops the frames before `start` (accurate seek), so the first frame is the one at
`start` (the first with pts >= start).

What players see in `copy` mode: stream copy can only start on a keyframe, so the output
begins at the keyframe at or before `start`, at most one GOP early, and `-t` ends it at
`end` (it may overshoot by a couple of frames). In MP4/M4A the muxer writes an edit list
that hides that lead-in: players that honour edit lists (ffmpeg, browsers, QuickTime, VLC)
start exactly at `start` and report the requested duration; the few that ignore edit lists
show up to one GOP of earlier content first. We never pass `-avoid_negative_ts make_zero`,
which would make the lead-in visible everywhere. Matroska has no edit lists, so an MKV copy
clip shows the lead-in and lasts up to one GOP longer than asked. Use `smart` or `accurate`
for frame-exact clips.

Which frames a frame-exact clip holds: those with start <= pts < end, where a frame within
BOUNDARY_SLACK (0.5 ms) of `start` or `end` counts as being at it: times such as 7/30 s cannot
be written exactly in decimal, and "start at 0.2333" means the frame at 0.23333... The
accurate encode gets this by seeking to `start - slack` with the same duration; the smart
cut plans with the same rule.

Range rules: a clip whose start is at or past the end of the media is a PermanentError; an
end past the end of the media is clamped to the media's duration (the clip is as long as the
media allows) and `ClipResult.note` says so.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import ffmpeg

from clipper.errors import PermanentError
from clipper.jobs.command import JobControl, ffmpeg_base, local_input_options, run_ffmpeg
from clipper.jobs.probe import MediaInfo, VideoStream
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

# A copy clip starts at the keyframe before `start`; in MKV that lead-in is visible, so the
# output may be up to one GOP longer than asked. Encoders put keyframes at most ~10 s apart;
# the allowance only keeps verification from rejecting long-GOP sources.
COPY_LEAD_IN_ALLOWANCE = 20.0


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


def resolve_range(clip: ClipSpec, source: MediaInfo) -> ClipRange:
    """Start at/after the end of the media: permanent error. End past it: clamped, with a note."""
    if clip.start >= source.duration:
        raise PermanentError(f"{clip_label(clip)}: start {clip.start:g} s is past the end of the media "
                             f"({source.duration:.3f} s)")
    if clip.end > source.duration:
        note = f"end {clip.end:g} s is past the end of the media; clamped to {source.duration:.3f} s"
        return ClipRange(clip.start, source.duration, note)
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
                max_side: int | None = None, max_width: int | None = None, upscale: bool = False) -> tuple[int, int]:
    """Output size keeping the aspect ratio. Targets: `width` and/or `height` (both: fit
    inside the box), `max_side` (the longer side); the smallest scale they ask for wins.
    Caps that never enlarge: `max_width` (gif) and, unless `upscale`, the source size.
    Both sides even (4:2:0 chroma needs it) and never above any bound."""
    targets = [t for t in (width and width / src_w, height and height / src_h,
                           max_side and max_side / max(src_w, src_h)) if t]
    scale = min(targets) if targets else 1.0
    if max_width:
        scale = min(scale, max_width / src_w)
    if not upscale:
        scale = min(scale, 1.0)
    w_bounds = [b for b in (width, max_side, max_width) if b] + ([] if upscale else [src_w])
    h_bounds = [b for b in (height, max_side) if b] + ([] if upscale else [src_h])
    return (_even(src_w * scale, min(w_bounds) if w_bounds else None),
            _even(src_h * scale, min(h_bounds) if h_bounds else None))


def display_size(video: VideoStream) -> tuple[int, int]:
    """Width and height as displayed: ffmpeg rotates frames by the display matrix when it
    re-encodes, so a 90°/270° source is scaled with its sides swapped."""
    if video.rotation % 180 == 90:
        return video.height, video.width
    return video.width, video.height


def output_size(clip: ClipSpec, video: VideoStream, media: MediaSettings) -> tuple[int, int]:
    w, h = display_size(video)
    max_width = media.gif_max_width if clip.format == "gif" else None
    return scaled_size(w, h, width=clip.width, height=clip.height, max_side=clip.max, max_width=max_width,
                       upscale=clip.upscale)


# -- command builders (pure) -----------------------------------------------------------------

def seconds_arg(seconds: float) -> str:
    """Seconds for the command line: microsecond precision, no float noise ("5.5", not 5.500000001)."""
    text = f"{seconds:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def seek_input(src: Path, start: float | str, read: float | None = None) -> ffmpeg.nodes.FilterableStream:
    """The source as an ffmpeg-python input: input-side seek (`-ss` before `-i`, so ffmpeg
    jumps through the index) and the local-file whitelists. `start` in seconds, or already
    formatted; `read`: input-side `-t`, seconds of the input to read at most."""
    opts = local_input_options()
    kwargs: dict[str, object] = dict(zip((o.lstrip("-") for o in opts[::2]), opts[1::2], strict=True))
    if read is not None:
        kwargs["t"] = seconds_arg(read)
    return ffmpeg.input(str(src), ss=start if isinstance(start, str) else seconds_arg(start), **kwargs)


def ffmpeg_argv(*streams: object, out: Path, **kwargs: object) -> list[str]:
    return [*ffmpeg_base(), *ffmpeg.output(*streams, str(out), **kwargs).get_args()]


def build_copy_command(src: Path, source: MediaInfo, fmt: str, start: float, duration: float, out: Path) -> list[str]:
    """Stream copy of the first video and first audio stream (by index, so cover art that
    ffprobe lists as a video stream is never picked), keyframe-aligned (see module doc)."""
    inp = seek_input(src, start)
    streams = []
    if source.video is not None and fmt != "m4a":
        streams.append(inp[str(source.video.index)])
    if source.audio is not None:
        streams.append(inp[str(source.audio.index)])
    opts: dict[str, object] = {"c": "copy", "t": seconds_arg(duration), "format": MUXERS[fmt]}
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
                         media: MediaSettings, out: Path, *, threads: int = 0) -> list[str]:
    """Re-encode `duration` seconds from `start` (frame-exact) into the clip's format."""
    fmt = clip.format
    inp = seek_input(src, start)
    opts: dict[str, object] = {"t": seconds_arg(duration), "format": MUXERS[fmt]}
    streams = []
    if not clip.audio_only:
        assert source.video is not None
        video = inp[str(source.video.index)]
        w, h = output_size(clip, source.video, media)
        if fmt == "gif":
            # one graph: the palette is computed from the clip itself, then applied
            video = video.filter("fps", media.gif_fps).filter("scale", w, h, flags="lanczos")
            split = video.split()
            palette = split[0].filter("palettegen", stats_mode="diff")
            video = ffmpeg.filter([split[1], palette], "paletteuse", dither="bayer", bayer_scale=5)
        else:
            if (w, h) != display_size(source.video):
                video = video.filter("scale", w, h)
            opts.update(video_encoder_options(fmt, media))
        streams.append(video)
    if source.audio is not None and fmt != "gif":
        streams.append(inp[str(source.audio.index)])
        opts.update(audio_encoder_options(fmt, media))
    if fmt in FASTSTART_FORMATS:
        opts["movflags"] = "+faststart"
    if not clip.audio_only:
        # never duplicate or drop frames to fit a constant rate (the mp4 default): a source
        # whose video starts after its audio would get a duplicated first frame
        opts["fps_mode"] = "passthrough"
    if threads:
        opts["threads"] = threads
    return ffmpeg_argv(*streams, out=out, **opts)


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
            tolerance, overshoot = 0.5, COPY_LEAD_IN_ALLOWANCE
        else:
            cmd = build_encode_command(src, source, clip, max(0.0, rng.start - BOUNDARY_SLACK), rng.duration, media,
                                       tmp, threads=threads)
            run_ffmpeg(cmd, what=f"{clip_label(clip)} encode", timeout=timeout, control=control)
            tolerance, overshoot = frame_tolerance(source, clip.format, media), None
        vcodec, acodec = expected_codecs(clip.format, mode, source)
        size = output_size(clip, source.video, media) if mode != "copy" and vcodec else (None, None)
        info = verify_output(
            tmp, expect_video=vcodec is not None, expect_audio=acodec is not None and source.audio is not None,
            duration=rng.duration, tolerance=tolerance, overshoot=overshoot, width=size[0], height=size[1],
            codec=vcodec, audio_codec=acodec if source.audio else None, control=control, what=clip_label(clip),
        )
        return ClipResult(finish(tmp, final), info, mode, "; ".join(notes) or None)
    finally:
        tmp.unlink(missing_ok=True)
