"""Smart cut: a frame-exact H.264 clip that re-encodes only its ends.

`smartplan` splits the clip on the source's keyframes into a re-encoded head, a copied
middle and a re-encoded tail, and says why a boundary is sometimes a GOP further in (B-frame
delay, idr_pic_id). This module reads what the plan needs (packet index, headers), writes the
pieces with one ffmpeg process (one input per piece, each with its own seek), joins them with
the concat demuxer (explicit durations, `auto_convert=0`) and stream-copies the source's
audio over the whole range in that same final pass, so it has no seams.

The joined stream must be one valid H.264 stream: the re-encoded pieces must carry SPS/PPS
byte-identical to the source's, or strict (hardware, browser) decoders break at the joins.
That is achievable when the source was encoded by x264, which writes its settings into an
SEI message of the first frame: the pieces are encoded with the header-relevant ones (CABAC,
refs, B-frames and pyramid, weighted prediction, 8x8 transform, chroma QP offset, rate-control
mode for `pic_init_qp`, level, HRD), with psy off so x264 does not move the chroma QP offset.
After encoding, the pieces' SPS/PPS are compared byte for byte with the source's.

Frame counts come from the packet index (`-frames:v N`, never `-t`), every time is computed
exactly in the stream's time base, and the B-frame structure (hence the decode delay) is the
source's, so timestamps stay ordered across the joins.

Seeks. The plan is in packet time; every `-ss` is in clip time (relative to the container's
start time, which ffmpeg adds to `-ss`, while `-read_intervals` takes packet time). Demuxers
seek to the keyframe whose DTS is at or before the target; in an MP4 with B-frames and no edit
list that keyframe can be shown after the target, and the frames just before it would be lost.
So the index is read from INDEX_LEAD before `start` (and the plan checks that it reaches back
far enough), and a head that starts between keyframes is decoded from its own GOP's keyframe
(input-side `-ss` just past it) and trimmed to its first frame by an output-side `-ss`.

Before joining, each piece is checked: its frame count is the planned one, the copied middle
starts with the planned keyframe (same packet size), and re-encoded pieces carry the source's
SPS/PPS. The joined output is then verified like any clip (streams, duration within a frame).

Anything this cannot do exactly raises `SmartCutFallback` (the caller re-encodes the whole
clip and says why): non-H.264 or non-x264 video, more than one video stream, open GOPs,
interlacing, variable frame rate, rotation, a resize, formats other than mp4/mkv, sources
other than MP4 (see SOURCE_CONTAINERS), a clip shorter than two GOPs or too short to leave a
GOP to copy, headers that do not match, or any failure of the smart path itself. Timeouts,
signals and shutdown propagate.

Cost: four ffmpeg/ffprobe processes (index and headers in parallel, pieces, join) plus the
output probe, and the encoding of at most two GOPs at each end; a copied middle is written
twice (piece, then join), which is disk traffic, not CPU.
"""

from __future__ import annotations

import concurrent.futures
import math
import shutil
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg

from clipper.errors import PermanentError
from clipper.jobs.clip import COPY_AUDIO_CODECS, clip_label
from clipper.jobs.probe import PROBE_TIMEOUT, MediaInfo, packet_index_csv
from clipper.jobs.spec import ClipSpec
from clipper.media.command import (
    JobControl,
    ffmpeg_argv,
    ffmpeg_base,
    run_ffmpeg,
    seek_input,
)
from clipper.media.h264 import SourceHeaders, b_frame_depth, parse_avcc, read_mp4_track, read_source_headers, x264_params
from clipper.media.smartplan import (
    IndexPacket,
    Piece,
    SmartCutFallback,
    SmartPlan,
    index_from_csv,
    microseconds,
    plan_smart_cut,
)
from clipper.media.verify import verify_output
from clipper.settings import MediaSettings

__all__ = ["SmartCutFallback", "make_smart_clip"]

SMART_FORMATS = frozenset({"mp4", "mkv"})
# ffprobe format_name of the MP4 family. Matroska sources fall back: ffmpeg 5.1 moves an
# input-side seek 3/23 s earlier for containers that seek by DTS when there are B-frames, so a
# stream copy cannot be made to start exactly on a given keyframe there.
SOURCE_CONTAINERS = ("mov", "mp4")
INDEX_LEAD = 1.0  # seconds read before `start`: more than any B-frame delay (see the module doc)
INDEX_MARGIN = 2.0  # seconds read past `end`, so B-frames shown before `end` but decoded after it are seen
CONCAT_FORMAT_WHITELIST = "concat,mov,mp4,m4a,3gp,3g2,mj2"
PIECE_READ_MARGIN = 0.5  # seconds read past a piece: B-frames decoded after its last shown frame


def read_packet_index(src: Path, stream: int, lo: float | None, hi: float, *, control: JobControl,
                      timeout: float) -> list[IndexPacket]:
    """Packets of one stream from the keyframe before `lo` (None: the start of the file) to
    `hi`, both in packet time, from the container's index (-read_intervals seeks: ~0.1 s however
    long the file)."""
    return index_from_csv(packet_index_csv(src, stream, lo, hi, "pts,dts,duration,size,flags",
                                           what="smart cut: keyframe index", control=control,
                                           timeout=min(timeout, PROBE_TIMEOUT)))


def check_pieces(plan: SmartPlan, workdir: Path, headers: SourceHeaders) -> None:
    """Each piece holds the planned number of frames; a copied piece starts with the planned
    keyframe (same size); an encoded piece carries exactly the source's SPS/PPS."""
    for i, piece in enumerate(plan.pieces):
        track = read_mp4_track(workdir / f"piece{i}.mp4")
        if track.samples != piece.frames:
            raise SmartCutFallback(f"piece {i} has {track.samples} frames, {piece.frames} planned")
        if piece.kind == "copy" and piece.first_size and track.first_sample_size != piece.first_size:
            raise SmartCutFallback("the copied middle does not start on the planned keyframe")
        if piece.kind == "encode":
            sps, pps = parse_avcc(track.avcc)
            if sps != headers.sps:
                raise SmartCutFallback("re-encoded SPS differs from the source's")
            if pps != headers.pps:
                raise SmartCutFallback("re-encoded PPS differs from the source's")


# -- commands (pure) -------------------------------------------------------------------------

def seconds_floor(t: Fraction) -> str:
    """Microseconds rounded down: a seek target at or just before an exact frame time."""
    return f"{math.floor(t * 1_000_000) / 1_000_000:.6f}"


def seconds_ceil(t: Fraction) -> str:
    return f"{math.ceil(t * 1_000_000) / 1_000_000:.6f}"


@dataclass(frozen=True)
class PieceSeek:
    """Where one piece is read from, in clip time: input-side `-ss` and `-t`, and for a head
    that starts between keyframes an output-side `-ss` that drops the frames before it."""

    input: str
    read: float
    output: str | None = None


def piece_seek(plan: SmartPlan, piece: Piece) -> PieceSeek:
    """Copy: `-ss` at the keyframe (rounded up: the demuxer lands on the keyframe whose DTS is
    at or before the target, and a keyframe's DTS is at or before its PTS). A piece starting on
    a keyframe: `-ss` at it (rounded down; the accurate seek keeps it). A head: `-ss` half a
    frame past the keyframe of its own GOP, so the demuxer cannot land on the next keyframe and
    lose the frames shown just before that one (module doc), then output-side `-ss` to half a
    frame before its first frame."""
    first = plan.clip_time(piece.first_pts)
    if piece.kind == "copy":
        return PieceSeek(seconds_ceil(first), float(piece.duration) + PIECE_READ_MARGIN)
    if piece.decode_from is None or piece.decode_from == piece.first_pts:
        return PieceSeek(seconds_floor(first), float(piece.duration) + PIECE_READ_MARGIN)
    half = Fraction(plan.frame_ticks, 2) * plan.time_base
    seek = seconds_floor(plan.clip_time(piece.decode_from) + half)
    skip = first - half - Fraction(seek)  # whole frames, ~0 when the head starts right after the keyframe
    read = float(first + piece.duration - Fraction(seek)) + PIECE_READ_MARGIN
    return PieceSeek(seek, read, seconds_floor(skip) if skip >= half else None)


def build_pieces_command(src: Path, source: MediaInfo, plan: SmartPlan, params: str, workdir: Path, *,
                         preset: str, threads: int) -> list[str]:
    """One ffmpeg: each piece from its own input (own seek), encoded or copied to piece<i>.mp4.
    `threads` > 0 bounds the decoders (input-side), the implicit filter graphs and the encoders."""
    video = source.video
    assert video is not None
    tb = plan.time_base
    outputs = []
    for i, piece in enumerate(plan.pieces):
        seek = piece_seek(plan, piece)
        # `read` is an input-side limit too: with several inputs, ffmpeg 5.1 may otherwise go on
        # reading and decoding an input whose output is complete (5 s instead of 0.6 s for 10 s)
        encode = piece.kind == "encode"
        stream = seek_input(src, seek.input, seek.read, threads=threads if encode else 0)[str(video.index)]
        opts: dict[str, object] = {"format": "mp4", "frames:v": piece.frames}
        if seek.output is not None:
            opts["ss"] = seek.output
        if tb.numerator == 1:
            opts["video_track_timescale"] = tb.denominator
        if not encode:
            opts["c:v"] = "copy"
        else:
            opts.update({"c:v": "libx264", "preset": preset, "x264-params": params, "pix_fmt": video.pix_fmt or "yuv420p",
                         "fps_mode": "passthrough"})
            if threads > 0:
                opts["threads"] = threads
        outputs.append(ffmpeg.output(stream, str(workdir / f"piece{i}.mp4"), **opts))
    # a global option: bounds the simple filter graph (pixel format) of every encoded piece
    filter_threads = ["-filter_threads", str(threads)] if threads > 0 and any(p.kind == "encode" for p in plan.pieces) else []
    return [*ffmpeg_base(), *filter_threads, *ffmpeg.merge_outputs(*outputs).get_args()]


def concat_list(plan: SmartPlan) -> str:
    """ffconcat list with explicit durations (so no piece's probed duration matters)."""
    lines = ["ffconcat version 1.0"]
    for i, piece in enumerate(plan.pieces):
        lines += [f"file piece{i}.mp4", f"duration {float(piece.duration):.6f}"]
    return "\n".join(lines) + "\n"


def build_join_command(src: Path, source: MediaInfo, plan: SmartPlan, listfile: Path, fmt: str, out: Path) -> list[str]:
    """Concat the video pieces and stream-copy the source's audio over the whole range, from
    the first frame's time; `-copypriorss 0` drops the audio packets before it, so the audio
    starts within one audio frame of the video."""
    video = ffmpeg.input(str(listfile), format="concat", safe=1, auto_convert=0, protocol_whitelist="file",
                         format_whitelist=CONCAT_FORMAT_WHITELIST)["v:0"]
    streams = [video]
    if source.audio is not None:
        read = float(plan.duration) + PIECE_READ_MARGIN
        streams.append(seek_input(src, seconds_floor(plan.start), read)[str(source.audio.index)])
    opts: dict[str, object] = {"format": "mp4" if fmt == "mp4" else "matroska", "c": "copy",
                               "t": f"{float(plan.duration):.6f}", "copypriorss": 0}
    if fmt == "mp4":
        opts["movflags"] = "+faststart"
        if plan.time_base.numerator == 1:
            opts["video_track_timescale"] = plan.time_base.denominator
    return ffmpeg_argv(*streams, out=out, **opts)


# -- running ---------------------------------------------------------------------------------

def check_source(source: MediaInfo, clip: ClipSpec) -> None:
    """Fallback reasons visible from the probe alone (no process needed)."""
    v = source.video
    if clip.format not in SMART_FORMATS:
        raise SmartCutFallback(f"format {clip.format} (smart cut makes mp4 and mkv)")
    if clip.resized:
        raise SmartCutFallback("a resize re-encodes every frame anyway")
    if v is None or v.codec != "h264":
        raise SmartCutFallback(f"{v.codec if v else 'no'} video (smart cut needs H.264)")
    if source.video_streams > 1:
        raise SmartCutFallback("more than one video stream")
    if v.field_order not in (None, "progressive", "unknown"):
        raise SmartCutFallback("interlaced video")
    if v.rotation:
        raise SmartCutFallback("rotated video")
    if v.time_base is None:
        raise SmartCutFallback("unknown video time base")
    if not any(c in source.format_name.split(",") for c in SOURCE_CONTAINERS):
        raise SmartCutFallback(f"{source.format_name.split(',')[0]} source (smart cut reads MP4)")
    if clip.format == "mp4" and source.audio is not None and source.audio.codec not in COPY_AUDIO_CODECS["mp4"]:
        raise SmartCutFallback(f"{source.audio.codec} audio cannot be copied into mp4")


def make_smart_clip(src: Path, source: MediaInfo, clip: ClipSpec, start: float, end: float, out: Path,
                    media: MediaSettings, *, threads: int, control: JobControl, timeout: float) -> MediaInfo:
    """Write the smart-cut clip to `out` and return its verified probe, or raise
    SmartCutFallback before anything irreversible happened."""
    check_source(source, clip)
    video = source.video
    assert video is not None and video.time_base is not None
    # the plan and the index are in packet time, clip times are relative to the container's start
    origin = microseconds(source.start_time)
    video_start = video.start_time if video.start_time is not None else source.start_time
    lo, hi = float(origin) + start - INDEX_LEAD, float(origin) + end + INDEX_MARGIN
    from_file_start = lo <= video_start
    # the index and the headers are independent: read them at once (two ~0.07 s processes)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        index = pool.submit(read_packet_index, src, video.index, None if from_file_start else lo, hi, control=control,
                            timeout=timeout)
        headers = pool.submit(read_source_headers, src, video.index, control=control, timeout=timeout)
        packets, head = index.result(), headers.result()
    if head.x264 is None:
        raise SmartCutFallback("the source was not encoded by x264, whose headers a re-encode can reproduce")
    params = x264_params(head.x264, video.level)
    plan = plan_smart_cut(packets, video.time_base, start, end, origin=origin,
                          min_encoded_frames=b_frame_depth(head.x264) + 2, index_from_file_start=from_file_start)
    workdir = Path(tempfile.mkdtemp(prefix=f".smart-{clip.name}-", dir=out.parent))
    label = clip_label(clip)
    try:
        # A failure here is specific to the smart path (an x264 option this x264 refuses, a
        # join the muxer rejects, an output that fails its checks): the caller re-encodes the
        # whole clip instead, which fails for good if the media itself is broken. Timeouts,
        # signals and shutdown (TransientError, Cancelled) are not caught.
        run_ffmpeg(build_pieces_command(src, source, plan, params, workdir, preset=media.x264_preset, threads=threads),
                   what=f"{label} smart cut pieces", timeout=timeout, control=control)
        check_pieces(plan, workdir, head)
        listfile = workdir / "list.ffconcat"
        listfile.write_text(concat_list(plan))
        run_ffmpeg(build_join_command(src, source, plan, listfile, clip.format, out),
                   what=f"{label} smart cut join", timeout=timeout, control=control)
        frame = float(plan.frame_ticks * plan.time_base)
        return verify_output(
            out, expect_video=True, expect_audio=source.audio is not None, duration=end - start,
            tolerance=frame + 0.06, width=video.width, height=video.height, codec="h264",
            audio_codec=source.audio.codec if source.audio else None, control=control, what=label,
        )
    except PermanentError as exc:
        raise SmartCutFallback(f"smart cut failed: {exc}") from exc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
