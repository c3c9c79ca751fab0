"""The clip stage: one ClipSpec -> one verified file, in mode copy, accurate or smart.

Command builders are pure (`build_copy_command`, `build_encode_command`) and unit-tested for
their exact argv; `make_clip` runs one and verifies the output before returning it.

Seeking (where `-ss` goes and where to decode from): `seek.py`. Sizes: `geometry.py`.

What players see in `copy` mode: stream copy can only start on a keyframe, so the output
begins at the keyframe at or before `start`, at most one GOP early, and `-t` ends it at
`end` (it may overshoot by a couple of frames). In MP4/M4A the muxer writes an edit list
that hides that lead-in: players that honour edit lists (ffmpeg, browsers, QuickTime, VLC)
start exactly at `start` and report the requested duration; the few that ignore edit lists
show up to one GOP of earlier content first. We never pass `-avoid_negative_ts make_zero`,
which would make the lead-in visible everywhere. Matroska has no edit lists, so an MKV copy
clip shows the lead-in and lasts longer than asked by exactly that much. Verification allows
that lead-in, measured on the source's packet index (`copy_lead_in`, read only when the output
is longer than COPY_TOLERANCE alone allows, as MKV copies are), plus COPY_TOLERANCE;
a long GOP is never rejected, an output longer than its own lead-in explains is.
Use `smart` or `accurate` for frame-exact clips.

Which frames a frame-exact clip holds (start <= pts < end, BOUNDARY_SLACK) and how the
encode gets exactly those: see `seek.py`.

Range rules (`resolve_range`): a format with video ends where the video ends
(`MediaInfo.video_end`; the container's duration is the longest stream's, and audio may run
on after the picture); audio-only formats end at the end of the media. A clip starting at or
past that end or after the last video frame, or (with video) ending before the first, is a
PermanentError; an end past it is clamped (the clip is as long as the media allows) and
`ClipResult.note` says so. A source whose audio is shorter than the clip gives a clip whose
audio is as long as the source has in that range (verified per stream).

Threads: `threads` (`workers.ffmpeg_threads`) bounds the decoder (input-side `-threads`), the
filter graph (`-filter_complex_threads`; ffmpeg-python always writes `-filter_complex`, which
`-filter_threads` does not reach) and the encoder (output-side `-threads`). 0: ffmpeg's choice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import ffmpeg

from clipper.errors import PermanentError
from clipper.jobs.probe import MediaInfo, VideoStream
from clipper.jobs.spec import ClipSpec
from clipper.media.command import (
    JobControl,
    ffmpeg_argv,
    ffmpeg_base,
    output_thread_options,
    run_ffmpeg,
    seconds_arg,
    seek_input,
)
from clipper.media.geometry import display_size, needs_scale, scaled_size
from clipper.media.seek import BOUNDARY_SLACK, Seek, accurate_seek, copy_lead_in, first_video_time, plan_seek
from clipper.media.verify import verify_output
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

# How far a copy clip's duration may be from the request besides its keyframe lead-in: `-t`
# overshoots by a couple of frames, and MKV delays the video by the B-frame reorder depth.
COPY_TOLERANCE = 0.5


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
    return (source.duration, "media") if clip.audio_only else source.picture_end()


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

def output_size(clip: ClipSpec, video: VideoStream, media: MediaSettings) -> tuple[int, int]:
    w, h = display_size(video)
    cap_side = media.gif_max_width if clip.format == "gif" else None  # the longer side (module doc)
    return scaled_size(w, h, width=clip.width, height=clip.height, max_side=clip.max, cap_side=cap_side,
                       upscale=clip.upscale)


# -- command builders (pure) -----------------------------------------------------------------

def build_copy_command(src: Path, source: MediaInfo, fmt: str, start: float, duration: float, out: Path) -> list[str]:
    """Stream copy of the first video and first audio stream (by index, so cover art that
    ffprobe lists as a video stream is never picked), keyframe-aligned (see module doc)."""
    return [*ffmpeg_base(), *copy_output(src, source, fmt, start, duration, out).get_args()]


def copy_output(src: Path, source: MediaInfo, fmt: str, start: float, duration: float,
                out: Path) -> ffmpeg.nodes.OutputStream:
    """The ffmpeg-python output of `build_copy_command`: several of them make one ffmpeg
    (clipper.jobs.copies), each output reading its own input-side-seeked input."""
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
    if fmt == "mp4" and source.video is not None and source.video.codec == "hevc":
        opts["tag:v"] = "hvc1"  # Apple players refuse the default hev1 tag
    return ffmpeg.output(*streams, str(out), **opts)


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


def first_mode(clip: ClipSpec, source: MediaInfo, notes: list[str]) -> str:
    """The mode to try: copy becomes accurate where a stream copy is impossible (noted), unless
    the message asked for copy explicitly (then it is an error that names the obstacle)."""
    if clip.mode != "copy":
        return clip.mode
    obstacle = copy_obstacle(clip, source)
    if obstacle and clip.mode_was_explicit:
        raise PermanentError(f"{clip_label(clip)}: mode copy is impossible: {obstacle}; use mode accurate")
    if obstacle:
        notes.append(f"copy impossible ({obstacle}); re-encoded")
        return "accurate"
    return "copy"


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
    try:
        mode = first_mode(clip, source, notes)
        if mode == "smart":
            # imported here: smartcut imports this module's tables (a cycle at import time otherwise)
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
        else:
            begin = max(0.0, rng.start - BOUNDARY_SLACK)
            seek = accurate_seek(src, source, begin, control=control)
            cmd = build_encode_command(src, source, clip, begin, rng.duration, media, tmp, threads=threads, seek=seek)
            run_ffmpeg(cmd, what=f"{clip_label(clip)} encode", timeout=timeout, control=control)
        info = verify_clip(tmp, src, source, clip, rng, mode, media, control)
        return ClipResult(finish(tmp, final), info, mode, "; ".join(notes) or None)
    finally:
        tmp.unlink(missing_ok=True)


def verify_clip(tmp: Path, src: Path | str, source: MediaInfo, clip: ClipSpec, rng: ClipRange, mode: str,
                media: MediaSettings, control: JobControl) -> MediaInfo:
    """ffprobe the clip ffmpeg wrote and raise unless it is what was asked for (media.verify)."""
    if mode == "copy":
        tolerance, overshoot = COPY_TOLERANCE, COPY_TOLERANCE

        def lead_in() -> float:
            return copy_lead_in(src, source, rng.start, control=control)
    else:
        tolerance, overshoot, lead_in = frame_tolerance(source, clip.format, media), None, None
    vcodec, acodec = expected_codecs(clip.format, mode, source)
    reencoded = mode != "copy" and vcodec is not None
    size = output_size(clip, source.video, media) if reencoded else (None, None)
    video_len, audio_len = expected_stream_lengths(source, rng.start, rng.end)
    expect_audio: bool | None = acodec is not None and source.audio is not None
    if expect_audio and audio_len is not None and audio_len <= tolerance:
        expect_audio = None  # the source's audio ends before the clip (or starts after it)
    return verify_output(
        tmp, expect_video=vcodec is not None, expect_audio=expect_audio,
        duration=rng.duration, tolerance=tolerance, overshoot=overshoot, width=size[0], height=size[1],
        codec=vcodec, audio_codec=acodec if source.audio else None, square_pixels=reencoded,
        video_duration=video_len if vcodec else None, audio_duration=audio_len if acodec else None,
        explain_overshoot=lead_in, control=control, what=clip_label(clip),
    )
