"""Seeking: where each ffmpeg must be told to seek, and from where it must decode, so that a
cut starts on the right frame and every stream starts with it.

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

Which frames a frame-exact clip holds: those with start <= pts < end, where a frame within
BOUNDARY_SLACK (0.5 ms) of `start` or `end` counts as being at it: times such as 7/30 s cannot
be written exactly in decimal, and "start at 0.2333" means the frame at 0.23333... The
accurate encode gets this by trimming at `start - slack` with the same duration, and by
encoding in the source's time base (`-enc_time_base:v -1`): with the default 1/fps encoder
time base, frame times are rounded onto that grid before `-t` applies, so when `start` falls
between frames the frame at `end` would get in. The smart cut plans with the same rule.

"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipper.jobs.probe import MediaInfo, Packet, packet_index_csv, video_packets
from clipper.media.command import JobControl

BOUNDARY_SLACK = 0.0005  # seconds; far below any frame interval (see module doc)

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


def copy_seek_target(source: MediaInfo, start: float) -> float:
    """Where ffmpeg aims an input-side seek for `start` (see DTS_SEEK_SHIFT)."""
    return start - seek_shift(source)


def lead_in_from_packets(packets: list[Packet], target: float, start: float) -> float:
    """Seconds from the keyframe a copy cut lands on (the last at/before `target`; the first
    keyframe when none is) to `start`; all on the packets' clock (pure)."""
    keys = [p.pts for p in packets if p.keyframe]
    key = keyframe_before(keys, target)
    if key is None and keys and keys[0] <= start:
        key = keys[0]
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
    return keyframes_from_csv(packet_index_csv(src, stream, lo, hi, "pts_time,dts_time,flags", what="keyframe index",
                                               control=control))


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
    seek = plan_seek(source, start)
    if source.video is None or seek.input is None:
        return seek
    return plan_accurate_seek(source, start, find_keyframe_before(src, source, start, control=control))


def copy_lead_in(src: Path, source: MediaInfo, start: float, *, control: JobControl) -> float:
    """The lead-in a copy clip from `start` carries (module doc), from the packet index
    (~0.1 s); 0 when the copy does not seek on the input side."""
    if source.video is None or plan_seek(source, start).input is None:
        return 0.0
    target = copy_seek_target(source, start) + source.start_time  # packet times are on the container clock
    packets = video_packets(src, source.video.index, target, start + source.start_time + 0.1, control=control)
    return lead_in_from_packets(packets, target, start + source.start_time)
