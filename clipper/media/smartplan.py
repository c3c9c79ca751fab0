"""Smart-cut planning (pure): the source's video packet index and a clip range -> which
frames are re-encoded and which are stream-copied (`plan_smart_cut`).

Two clocks. Packets carry absolute timestamps; clip times (the message's `start`/`end`, what
a player shows, what ffmpeg's `-ss` takes) are relative to the container's start time
(`MediaInfo.start_time`), which is not 0 for e.g. an MP4 written with `-output_ts_offset`, a
TS remuxed with `-copyts`, or audio that starts before the video. The plan works in ticks of
the video time base and keeps that origin, so that commands seek in clip time
(`SmartPlan.clip_time`) while the plan, the index and the copied packets agree on ticks.

The clip [start, end) is split on the source's keyframes:

    head    first frame .. a keyframe   re-encoded, decoded from the keyframe before it
    middle  keyframe    .. keyframe     stream-copied
    tail    keyframe    .. end          re-encoded

The boundaries are not always the nearest keyframes, because each join must be one valid
H.264 stream:
- a re-encoded piece holds at least `min_encoded_frames` frames (the source's B-frame depth
  + 2): x264 derives its DTS delay from the first frames it sees, so a piece of one or two
  frames has none, unlike the copied middle, and the muxer squashes the DTS at the join into
  1-tick steps. A short head runs on to the next keyframe, a short tail starts one earlier;
- re-encoded pieces have a single IDR picture, their first (see `smartcut.x264_params`), and
  it always has idr_pic_id 0. Two consecutive IDR access units must differ in idr_pic_id
  (H.264 7.4.3), so a join IDR -> IDR is avoided: a re-encoded piece of >= 2 frames does not
  end on one, and a middle whose last GOP is a single frame gives that frame to the tail.
If nothing is left to copy, smart cut is not worth it (`SmartCutFallback`).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from clipper.media.seek import BOUNDARY_SLACK

MIN_GOPS = 2.0  # below this a full re-encode costs about the same as a smart cut


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


def microseconds(seconds: float) -> Fraction:
    """A time ffprobe printed with 6 decimals (a start time), exactly: ffmpeg keeps it in µs."""
    return Fraction(round(seconds * 1_000_000), 1_000_000)


# -- the plan --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Piece:
    kind: str  # "encode" | "copy"
    first_pts: int  # ticks
    frames: int
    duration: Fraction  # seconds
    first_size: int = 0  # bytes of the first packet (checks that a copy started where planned)
    # encode: the keyframe decoding starts from (the first frame's own GOP); == first_pts for a
    # piece that starts on a keyframe
    decode_from: int | None = None


@dataclass(frozen=True)
class SmartPlan:
    time_base: Fraction
    first_pts: int  # the clip's first frame
    pieces: tuple[Piece, ...]
    origin: Fraction = Fraction(0)  # the container's start time: clip time = pts * time_base - origin
    frame_ticks: int = 1  # one frame interval

    def clip_time(self, pts: int) -> Fraction:
        return pts * self.time_base - self.origin

    @property
    def frames(self) -> int:
        return sum(p.frames for p in self.pieces)

    @property
    def duration(self) -> Fraction:
        return sum((p.duration for p in self.pieces), Fraction(0))

    @property
    def start(self) -> Fraction:
        """The first frame, in clip time."""
        return self.clip_time(self.first_pts)


def plan_smart_cut(packets: list[IndexPacket], time_base: Fraction, start: float, end: float, *,
                   origin: Fraction = Fraction(0), min_encoded_frames: int = 1,
                   index_from_file_start: bool = False) -> SmartPlan:
    """Head/middle/tail pieces for frames with start <= t < end in clip time (t = pts *
    time_base - origin), a frame within BOUNDARY_SLACK of either counting as at it (the
    frames an accurate encode keeps). `packets` is the index in decode order; unless it was
    read from the beginning of the file it must begin with a keyframe shown at or before
    `start` (see `check_index_reaches`)."""
    if not packets:
        raise SmartCutFallback("no video packets in the range")
    slack = Fraction(BOUNDARY_SLACK)
    lo, hi = Fraction(start) + origin - slack, Fraction(end) + origin - slack
    if not index_from_file_start:
        check_index_reaches(packets, time_base, lo)
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
    first, last = selected[0].pts, selected[-1].pts + step
    after = [p for p in shown if p.pts * time_base >= hi]
    # keyframes a copied middle may start or end on; the middle may run to `end` itself when
    # the frame after the clip is a keyframe
    cuts = [p.pts for p in selected if p.keyframe] + ([after[0].pts] if after and after[0].keyframe else [])
    if len(cuts) < 2:
        raise SmartCutFallback("no complete GOP inside the clip")
    all_keys = [p.pts for p in shown if p.keyframe]
    gaps = [b - a for a, b in zip(all_keys, all_keys[1:], strict=False)]
    gop = statistics.median(gaps) if gaps else cuts[-1] - cuts[0]
    if last - first < MIN_GOPS * gop:
        raise SmartCutFallback(f"clip shorter than {MIN_GOPS:g} GOPs ({float(gop * time_base):.2f} s each)")

    def count(a: int, b: int) -> int:
        return sum(1 for p in selected if a <= p.pts < b)

    i, j = _copy_bounds(packets, cuts, first, last, count, min_encoded_frames)
    _check_closed_gops(packets, {cuts[i], cuts[j]})
    decode_from = None
    if count(first, cuts[i]):
        decode_from = max(k for k in all_keys if k <= first)  # there is one: check_index_reaches
        following = min(k for k in all_keys if k > decode_from)
        # the head's input seeks half a frame past `decode_from`; demuxers pick the keyframe
        # whose DTS is at or before the target, which must not be `following`
        if following - decode_from < min_encoded_frames * step:
            raise SmartCutFallback(f"keyframes only {(following - decode_from) // step} frames apart")

    sizes = {p.pts: p.size for p in packets}

    def piece(kind: str, a: int, b: int, decode: int | None = None) -> Piece | None:
        frames = count(a, b)
        return Piece(kind, a, frames, (b - a) * time_base, sizes[a], decode) if frames else None

    pieces = [piece("encode", first, cuts[i], decode_from), piece("copy", cuts[i], cuts[j]),
              piece("encode", cuts[j], last, cuts[j])]
    return SmartPlan(time_base, first, tuple(p for p in pieces if p), origin, step)


def _copy_bounds(packets: list[IndexPacket], cuts: list[int], first: int, last: int, count: Callable[[int, int], int],
                 min_frames: int) -> tuple[int, int]:
    """Indices (i, j) into `cuts` of the copied middle [cuts[i], cuts[j]): re-encoded ends of
    at least `min_frames` frames, and no middle ending on a one-frame GOP before a tail (both
    in the module doc)."""
    i, j = 0, len(cuts) - 1
    while i < j and 0 < count(first, cuts[i]) < min_frames:
        i += 1
    while i < j and 0 < count(cuts[j], last) < min_frames:
        j -= 1
    decode_index = {p.pts: n for n, p in enumerate(packets)}
    while i < j and count(cuts[j], last) and decode_index[cuts[j]] > 0 and packets[decode_index[cuts[j]] - 1].keyframe:
        j -= 1
    if i >= j:
        raise SmartCutFallback(f"no GOP left to copy once the re-encoded ends hold at least {min_frames} frames")
    return i, j


def check_index_reaches(packets: list[IndexPacket], time_base: Fraction, lo: Fraction) -> None:
    """The index must begin (in decode order) with a keyframe shown at or before `lo`
    (ticks * time_base): `-read_intervals` seeks like `-ss`, to the keyframe whose DTS is at
    or before the target, and in an MP4 with B-frames and no edit list that keyframe can be
    shown after it, so the frames shown just before it would be missing from the plan."""
    head = packets[0]
    if not head.keyframe or head.pts * time_base > lo:
        raise SmartCutFallback("the keyframe index does not reach back to the clip's first frame")


def _check_closed_gops(packets: list[IndexPacket], keyframes: set[int]) -> None:
    """A join at keyframe K is clean only if nothing decoded after K is shown before it
    (open-GOP leading pictures reference the previous GOP)."""
    for i, p in enumerate(packets):
        if p.keyframe and p.pts in keyframes:
            if any(q.pts < p.pts for q in packets[i + 1:]):
                raise SmartCutFallback("open GOP at a cut point")
