"""Smart cut: a frame-exact H.264 clip that re-encodes only its ends.

The clip [start, end) is split on the source's keyframes:

    head   first frame >= start .. first keyframe at/after start   re-encoded
    middle that keyframe        .. last keyframe at/before end     stream-copied
    tail   that keyframe        .. last frame before end           re-encoded

The three pieces are written by one ffmpeg process (three inputs, three outputs), joined with
the concat demuxer (explicit durations, `auto_convert=0`), and the source's audio is
stream-copied over the whole range in that same final pass, so it has no seams.

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

Before joining, each piece is checked: its frame count is the planned one, the copied middle
starts with the planned keyframe (same packet size), and re-encoded pieces carry the source's
SPS/PPS. The joined output is then verified like any clip (streams, duration within a frame).

Anything this cannot do exactly raises `SmartCutFallback` (the caller re-encodes the whole
clip and says why): non-H.264 or non-x264 video, more than one video stream, open GOPs,
interlacing, variable frame rate, rotation, a resize, formats other than mp4/mkv, sources
other than MP4 (see SOURCE_CONTAINERS), a clip shorter than two GOPs, headers that do not
match, or any failure of the smart path itself. Timeouts, signals and shutdown propagate.

Cost: four ffmpeg/ffprobe processes (index and headers in parallel, pieces, join) plus the
output probe, and the encoding of at most two GOPs; a copied middle is written twice (piece,
then join), which is disk traffic, not CPU.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import re
import shutil
import statistics
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg

from clipper.errors import PermanentError
from clipper.jobs.clip import BOUNDARY_SLACK, seek_input
from clipper.jobs.command import JobControl, ffmpeg_base, local_input_options, run_command, run_ffmpeg
from clipper.jobs.probe import PROBE_TIMEOUT, MediaInfo
from clipper.jobs.spec import ClipSpec
from clipper.jobs.verify import verify_output
from clipper.settings import MediaSettings

SMART_FORMATS = frozenset({"mp4", "mkv"})
# ffprobe format_name of the MP4 family. Matroska sources fall back: ffmpeg 5.1 moves an
# input-side seek 3/23 s earlier for containers that seek by DTS when there are B-frames, so a
# stream copy cannot be made to start exactly on a given keyframe there.
SOURCE_CONTAINERS = ("mov", "mp4")
MIN_GOPS = 2.0  # below this a full re-encode costs about the same as a smart cut
INDEX_MARGIN = 2.0  # seconds read past `end`, so B-frames shown before `end` but decoded after it are seen
CONCAT_FORMAT_WHITELIST = "concat,mov,mp4,m4a,3gp,3g2,mj2"
PIECE_READ_MARGIN = 0.5  # seconds read past a piece: B-frames decoded after its last shown frame


class SmartCutFallback(Exception):
    """This clip cannot be smart-cut exactly; the message says why (for ClipResult.note)."""


# -- the packet index ------------------------------------------------------------------------

@dataclass(frozen=True)
class IndexPacket:
    """A video packet in decode order; times in ticks of the stream's time base."""

    pts: int
    dts: int | None
    duration: int
    keyframe: bool
    size: int = 0


def index_from_csv(text: str) -> list[IndexPacket]:
    """`-show_entries packet=pts,dts,duration,size,flags -of csv=p=0` (ffprobe prints them in
    that order) -> packets in decode order. A packet without pts makes the stream unplannable."""
    def number(text: str) -> int | None:
        return int(text) if text.lstrip("-").isdigit() else None

    packets = []
    for line in text.splitlines():
        parts = line.strip().split(",")
        if len(parts) < 5:
            continue
        pts, dts, duration, size, flags = parts[:5]
        if number(pts) is None:
            raise SmartCutFallback("video packets without timestamps")
        packets.append(IndexPacket(int(pts), number(dts), number(duration) or 0, "K" in flags, number(size) or 0))
    return packets


def read_packet_index(src: Path, stream: int, lo: float, hi: float, *, control: JobControl,
                      timeout: float) -> list[IndexPacket]:
    """Packets of one stream from the keyframe before `lo` to `hi`, from the container's index
    (-read_intervals seeks: ~0.1 s however long the file)."""
    result = run_command(
        ["ffprobe", "-v", "error", *local_input_options(), "-select_streams", str(stream),
         "-read_intervals", f"{max(0.0, lo):.6f}%{hi:.6f}", "-show_entries", "packet=pts,dts,duration,size,flags",
         "-of", "csv=p=0", str(src)],
        what="smart cut: keyframe index", timeout=min(timeout, PROBE_TIMEOUT), control=control, capture_stdout=True,
    )
    return index_from_csv(result.stdout.decode("ascii", "replace"))


# -- the plan (pure) -------------------------------------------------------------------------

@dataclass(frozen=True)
class Piece:
    kind: str  # "encode" | "copy"
    first_pts: int  # ticks
    frames: int
    duration: Fraction  # seconds
    first_size: int = 0  # bytes of the first packet (checks that a copy started where planned)

    def seek(self, time_base: Fraction) -> Fraction:
        return self.first_pts * time_base


@dataclass(frozen=True)
class SmartPlan:
    time_base: Fraction
    first_pts: int  # the clip's first frame
    pieces: tuple[Piece, ...]

    @property
    def frames(self) -> int:
        return sum(p.frames for p in self.pieces)

    @property
    def duration(self) -> Fraction:
        return sum((p.duration for p in self.pieces), Fraction(0))

    @property
    def start(self) -> Fraction:
        return self.first_pts * self.time_base


def plan_smart_cut(packets: list[IndexPacket], time_base: Fraction, start: float, end: float) -> SmartPlan:
    """Head/middle/tail pieces for frames with start <= pts < end, a frame within
    BOUNDARY_SLACK of either counting as at it (the frames an accurate encode keeps)."""
    if not packets:
        raise SmartCutFallback("no video packets in the range")
    slack = Fraction(BOUNDARY_SLACK)
    lo, hi = Fraction(start) - slack, Fraction(end) - slack
    shown = sorted(packets, key=lambda p: p.pts)
    if len({p.pts for p in shown}) != len(shown):
        raise SmartCutFallback("duplicate video timestamps")
    selected = [p for p in shown if lo <= p.pts * time_base < hi]
    if not selected:
        raise SmartCutFallback("no video frame in the range")
    steps = [b.pts - a.pts for a, b in zip(shown, shown[1:], strict=False)]
    # constant frame rate, give or take the rounding of a coarse time base (Matroska's 1 ms
    # holds 1/30 s as 33, 33, 34)
    if steps and max(steps) - min(steps) > 1:
        raise SmartCutFallback("variable frame rate")
    step = selected[-1].duration or (round(statistics.mean(steps)) if steps else 1)
    after = [p for p in shown if p.pts * time_base >= hi]
    keys = [p.pts for p in selected if p.keyframe]
    k_head = keys[0] if keys else None
    # the middle may run to `end` itself when the frame after the clip is a keyframe
    k_last = after[0].pts if after and after[0].keyframe else (keys[-1] if keys else None)
    if k_head is None or k_last is None or k_last <= k_head:
        raise SmartCutFallback("no complete GOP inside the clip")
    all_keys = [p.pts for p in shown if p.keyframe]
    gaps = [b - a for a, b in zip(all_keys, all_keys[1:], strict=False)]
    gop = statistics.median(gaps) if gaps else k_last - k_head
    clip_ticks = (selected[-1].pts + step) - selected[0].pts
    if clip_ticks < MIN_GOPS * gop:
        raise SmartCutFallback(f"clip shorter than {MIN_GOPS:g} GOPs ({float(gop * time_base):.2f} s each)")
    _check_closed_gops(packets, {k_head, k_last})

    sizes = {p.pts: p.size for p in packets}

    def piece(kind: str, a: int, b: int) -> Piece | None:
        frames = sum(1 for p in selected if a <= p.pts < b)
        return Piece(kind, a, frames, (b - a) * time_base, sizes[a]) if frames else None

    last = selected[-1].pts + step
    pieces = [piece("encode", selected[0].pts, k_head), piece("copy", k_head, k_last), piece("encode", k_last, last)]
    return SmartPlan(time_base, selected[0].pts, tuple(p for p in pieces if p))


def _check_closed_gops(packets: list[IndexPacket], keyframes: set[int]) -> None:
    """A join at keyframe K is clean only if nothing decoded after K is shown before it
    (open-GOP leading pictures reference the previous GOP)."""
    for i, p in enumerate(packets):
        if p.keyframe and p.pts in keyframes:
            if any(q.pts < p.pts for q in packets[i + 1:]):
                raise SmartCutFallback("open GOP at a cut point")


# -- the source's H.264 headers and x264 settings --------------------------------------------

def bytes_from_hexdump(text: str) -> bytes:
    """ffprobe's `-show_data` hexdump ("00000000: 0164 000d ...  ascii") -> bytes."""
    out = bytearray()
    for line in text.splitlines():
        if ":" not in line:
            continue
        hexpart = line.split(":", 1)[1][:41]  # 8 groups of 4 hex digits, single spaces
        out += bytes.fromhex("".join(hexpart.split()))
    return bytes(out)


def parse_avcc(data: bytes) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """AVCDecoderConfigurationRecord -> (SPS NAL units, PPS NAL units)."""
    if len(data) < 7 or data[0] != 1:
        raise SmartCutFallback("the H.264 stream has no avcC configuration (Annex B source)")
    pos = 5
    sps, pps = [], []
    for target in (sps, pps):
        count = data[pos] & (0x1F if target is sps else 0xFF)
        pos += 1
        for _ in range(count):
            size = int.from_bytes(data[pos:pos + 2], "big")
            target.append(bytes(data[pos + 2:pos + 2 + size]))
            pos += 2 + size
    return tuple(sps), tuple(pps)


X264_RE = re.compile(rb"x264 - core (\d+)[^\x00]*? - options: ([^\x00]*)")


def x264_options_from_sei(data: bytes) -> dict[str, str] | None:
    m = X264_RE.search(data)
    if not m:
        return None
    options = {}
    for item in m.group(2).decode("ascii", "replace").split():
        key, _, value = item.partition("=")
        options[key] = value
    return options


@dataclass(frozen=True)
class SourceHeaders:
    sps: tuple[bytes, ...]
    pps: tuple[bytes, ...]
    x264: dict[str, str] | None


def read_source_headers(src: Path, stream: int, *, control: JobControl, timeout: float) -> SourceHeaders:
    """SPS/PPS from the stream's extradata and x264's settings from the first packet's SEI
    (one ffprobe reading one packet)."""
    result = run_command(
        ["ffprobe", "-v", "error", *local_input_options(), "-select_streams", str(stream), "-read_intervals", "%+#1",
         "-show_entries", "packet=data:stream=extradata", "-show_data", "-of", "json", str(src)],
        what="smart cut: stream headers", timeout=min(timeout, PROBE_TIMEOUT), control=control, capture_stdout=True,
    )
    data = json.loads(result.stdout or b"{}")
    streams = data.get("streams") or [{}]
    packets = data.get("packets") or [{}]
    sps, pps = parse_avcc(bytes_from_hexdump(streams[0].get("extradata") or ""))
    return SourceHeaders(sps, pps, x264_options_from_sei(bytes_from_hexdump(packets[0].get("data") or "")))


_DIRECT = {"0": "none", "1": "spatial", "2": "temporal", "3": "auto"}


def level_name(level: int | None) -> str | None:
    if not level or level <= 0:
        return None
    return "1b" if level == 9 else f"{level // 10}.{level % 10}"


def x264_params(options: dict[str, str], level: int | None) -> str:
    """The source's header-relevant x264 settings as an `-x264-params` string (pure).
    Raises SmartCutFallback for settings whose streams cannot be joined cleanly."""
    def flag(key: str) -> str:
        return options.get(key, "0")

    for key, why in (("open_gop", "open GOPs"), ("interlaced", "interlaced video"), ("intra_refresh", "intra refresh")):
        if flag(key) not in ("0", ""):
            raise SmartCutFallback(f"x264 source with {why}")
    if flag("cqm") != "0":
        raise SmartCutFallback("x264 source with custom quantizer matrices")
    params: list[tuple[str, str]] = []
    for key in ("cabac", "ref", "bframes", "b_pyramid", "weightb", "weightp", "8x8dct", "constrained_intra",
                "bluray_compat", "fake_interlaced", "stitchable", "chroma_qp_offset", "keyint_min", "keyint"):
        if key in options:
            params.append((key.replace("_", "-"), options[key]))
    if options.get("direct") in _DIRECT:
        params.append(("direct", _DIRECT[options["direct"]]))
    if "deblock" in options:
        on, _, rest = options["deblock"].partition(":")
        params.append(("deblock", rest.replace(":", ",")) if on == "1" else ("no-deblock", "1"))
    # psy RD/trellis would lower the chroma QP offset again on top of the value x264 printed
    params.append(("psy", "0"))
    rc = options.get("rc", "crf")
    if rc == "crf" and "crf" in options:
        params.append(("crf", options["crf"]))  # CRF's pic_init_qp is the rounded CRF
    elif rc == "cqp" and "qp" in options:
        params.append(("qp", options["qp"]))
    elif rc in ("abr", "2pass", "cbr") and "bitrate" in options:
        params.append(("bitrate", options["bitrate"]))  # ABR: pic_init_qp 26
    else:
        raise SmartCutFallback(f"x264 rate control {rc!r} not reproducible")
    if options.get("nal_hrd", "none") != "none":
        params.append(("nal-hrd", options["nal_hrd"]))
    for key in ("vbv_maxrate", "vbv_bufsize"):
        if key in options:
            params.append((key.replace("_", "-"), options[key]))
    name = level_name(level)
    if name:
        params.append(("level", name))
    return ":".join(f"{k}={v}" for k, v in params)


@dataclass(frozen=True)
class Mp4Track:
    """What we check in a piece we wrote: its H.264 configuration and sample table."""

    avcc: bytes
    samples: int
    first_sample_size: int


def _read_moov(path: Path) -> bytes:
    """The top-level `moov` box of an MP4, found by seeking over the others."""
    with open(path, "rb") as f:
        end = f.seek(0, 2)
        pos = 0
        while pos + 8 <= end:
            f.seek(pos)
            head = f.read(16)
            size, kind, header = int.from_bytes(head[:4], "big"), head[4:8], 8
            if size == 1:
                size, header = int.from_bytes(head[8:16], "big"), 16
            elif size == 0:
                size = end - pos
            if size < header:
                break
            if kind == b"moov":
                f.seek(pos)
                return f.read(size)
            pos += size
    raise SmartCutFallback(f"piece {path.name} has no moov box")


def read_mp4_track(path: Path) -> Mp4Track:
    """avcC and sample sizes (stsz) of the first video track of an MP4 (a box walk). Only the
    `moov` box is read: a copied middle piece can be gigabytes of `mdat`."""
    data = _read_moov(path)
    found: dict[bytes, bytes] = {}

    def walk(lo: int, hi: int) -> None:
        pos = lo
        while pos + 8 <= hi and not (b"avcC" in found and b"stsz" in found):
            size, kind, header = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8], 8
            if size == 1:
                size, header = int.from_bytes(data[pos + 8:pos + 16], "big"), 16
            elif size == 0:
                size = hi - pos
            if size < header or pos + size > hi:
                return
            body = pos + header
            if kind in (b"moov", b"trak", b"mdia", b"minf", b"stbl"):
                walk(body, pos + size)
            elif kind == b"stsd":
                walk(body + 8, pos + size)  # version/flags, entry count
            elif kind in (b"avc1", b"avc3"):
                walk(body + 78, pos + size)  # the VisualSampleEntry's fixed fields
            elif kind in (b"avcC", b"stsz"):
                found.setdefault(kind, data[body:pos + size])
            pos += size

    walk(0, len(data))
    if b"avcC" not in found or b"stsz" not in found:
        raise SmartCutFallback(f"piece {path.name} is not an H.264 MP4")
    stsz = found[b"stsz"]
    uniform, count = int.from_bytes(stsz[4:8], "big"), int.from_bytes(stsz[8:12], "big")
    first = uniform or (int.from_bytes(stsz[12:16], "big") if count else 0)
    return Mp4Track(found[b"avcC"], count, first)


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


def build_pieces_command(src: Path, source: MediaInfo, plan: SmartPlan, params: str, workdir: Path, *,
                         preset: str, threads: int) -> list[str]:
    """One ffmpeg: each piece from its own input (own seek), encoded or copied to piece<i>.mp4."""
    video = source.video
    assert video is not None
    tb = plan.time_base
    outputs = []
    for i, piece in enumerate(plan.pieces):
        # encode: decode from the keyframe before the first frame and drop up to it (accurate
        # seek), so the seek must not pass the frame; copy: the seek lands on the keyframe itself
        seek = seconds_floor(piece.seek(tb)) if piece.kind == "encode" else seconds_ceil(piece.seek(tb))
        # an input-side limit too: with several inputs, ffmpeg 5.1 may otherwise go on reading
        # and decoding an input whose output is complete (5 s instead of 0.6 s for a 10 s clip)
        read = float(piece.duration) + PIECE_READ_MARGIN
        stream = seek_input(src, seek, read)[str(video.index)]
        opts: dict[str, object] = {"format": "mp4", "frames:v": piece.frames}
        if tb.numerator == 1:
            opts["video_track_timescale"] = tb.denominator
        if piece.kind == "copy":
            opts["c:v"] = "copy"
        else:
            opts.update({"c:v": "libx264", "preset": preset, "x264-params": params, "pix_fmt": video.pix_fmt or "yuv420p",
                         "fps_mode": "passthrough"})
            if threads:
                opts["threads"] = threads
        outputs.append(ffmpeg.output(stream, str(workdir / f"piece{i}.mp4"), **opts))
    return [*ffmpeg_base(), *ffmpeg.merge_outputs(*outputs).get_args()]


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
    return [*ffmpeg_base(), *ffmpeg.output(*streams, str(out), **opts).get_args()]


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
    if clip.format == "mp4" and source.audio is not None and source.audio.codec not in {"aac", "mp3", "opus", "ac3", "eac3",
                                                                                        "alac", "flac"}:
        raise SmartCutFallback(f"{source.audio.codec} audio cannot be copied into mp4")


def make_smart_clip(src: Path, source: MediaInfo, clip: ClipSpec, start: float, end: float, out: Path,
                    media: MediaSettings, *, threads: int, control: JobControl, timeout: float) -> MediaInfo:
    """Write the smart-cut clip to `out` and return its verified probe, or raise
    SmartCutFallback before anything irreversible happened."""
    check_source(source, clip)
    video = source.video
    assert video is not None and video.time_base is not None
    # the index and the headers are independent: read them at once (two ~0.07 s processes)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        index = pool.submit(read_packet_index, src, video.index, start, end + INDEX_MARGIN, control=control,
                            timeout=timeout)
        headers = pool.submit(read_source_headers, src, video.index, control=control, timeout=timeout)
        packets, head = index.result(), headers.result()
    if head.x264 is None:
        raise SmartCutFallback("the source was not encoded by x264, whose headers a re-encode can reproduce")
    params = x264_params(head.x264, video.level)
    plan = plan_smart_cut(packets, video.time_base, start, end)
    workdir = Path(tempfile.mkdtemp(prefix=f".smart-{clip.name}-", dir=out.parent))
    label = f"clip ({clip.name})"
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
        frame = float(plan.pieces[0].duration / plan.pieces[0].frames)
        return verify_output(
            out, expect_video=True, expect_audio=source.audio is not None, duration=end - start,
            tolerance=frame + 0.06, width=video.width, height=video.height, codec="h264",
            audio_codec=source.audio.codec if source.audio else None, control=control, what=label,
        )
    except PermanentError as exc:
        raise SmartCutFallback(f"smart cut failed: {exc}") from exc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
