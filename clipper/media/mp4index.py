"""What an MP4/MOV/M4A output we wrote holds, read from its index (the `moov` box) in
Python, without starting an ffprobe (~70 ms of process start-up per output, issue 8).

`read_index(path)` returns the same `MediaInfo` ffprobe's JSON gives (`probe.media_info_from_json`)
for the fields the output checks use: the format's duration, the first video and audio
streams' codec, dimensions, sample aspect ratio and duration, the stream counts. The values
follow libavformat's mov demuxer, so a check cannot pass here and fail under ffprobe:

- the container's duration is `mvhd`'s (mov_read_mvhd sets the format's duration from it, and
  avformat keeps a duration the demuxer set);
- a stream's duration is the least of its `mdhd` duration, the sum of its `stts` sample
  durations (mov_read_stts) and its one edit's length rescaled to the media's time scale
  (mov_fix_index), in units of `1/mdhd timescale`, printed by ffprobe to 6 decimals; an empty
  edit before that one is the stream's start time (a stream that starts late), and the
  container starts with its earliest stream;
- codecs are named as ffmpeg names them (the sample entry's four-character code; `mp4a` and
  `mp4v` by the object type in their `esds`); the sample aspect ratio is `pasp`'s.

What nothing checks in an output is not read (profile, level, pixel format, frame rate,
rotation: None or 0). Anything this does not model raises `Unsure` and the caller asks ffprobe
instead: a file that does not start with `ftyp`, no `moov` (a truncated file), fragmented MP4
(`mvex`), other edit lists than those above, a rate other than 1, composition offsets without
an edit list (the first frame is shown late), cover art (ffprobe counts it as a stream), a
sample entry it does not know, no `pasp` when the sample aspect ratio matters, boxes nested
deeper than ours ever are. tests/media/test_mp4index.py holds every
kind of MP4 output clipper writes against ffprobe's reading of the same file.

One more check ffprobe does not make: every sample the index lists lies inside the file (the end
of each track's furthest chunk, from stco/stsc/stsz; a file cut short after its `moov`, even by
one byte, raises `Broken`, where ffprobe reads the header and says nothing). The `moov` is read
whole (at most `isobmff.MAX_MOOV` bytes; ours are kilobytes), never the media data; its sample tables
are read into compact arrays, not lists of Python ints.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import accumulate
from pathlib import Path

from clipper.jobs.probe import AudioStream, MediaInfo, VideoStream
from clipper.media.isobmff import Broken, Unsure, boxes, read_moov, table_entries

MAX_DEPTH = 12  # boxes nested deeper than this are not ours (ffprobe: "Atoms too deeply nested")
FORMAT_NAME = "mov,mp4,m4a,3gp,3g2,mj2"  # what ffprobe calls the demuxer

# sample entry -> ffmpeg's codec name (mp4a/mp4v: by their esds object type, below)
VIDEO_CODECS = {b"avc1": "h264", b"avc3": "h264", b"hvc1": "hevc", b"hev1": "hevc", b"av01": "av1",
                b"vp09": "vp9", b"vp08": "vp8"}
AUDIO_CODECS = {b"Opus": "opus", b"fLaC": "flac", b"ac-3": "ac3", b"ec-3": "eac3", b"alac": "alac",
                b".mp3": "mp3"}
OBJECT_TYPES = {0x20: "mpeg4", 0x40: "aac", 0x66: "aac", 0x67: "aac", 0x68: "aac", 0x69: "mp3", 0x6B: "mp3"}
CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}


@dataclass
class Track:
    handler: bytes = b""
    timescale: int = 0
    media_duration: int = 0  # mdhd
    sample_durations: int | None = None  # sum over stts
    samples: int = 0  # stsz
    uniform_size: int = 0  # stsz: every sample's size, when they are all one size
    sizes: array | None = None  # stsz: each sample's size otherwise
    chunks: array | None = None  # stco/co64: each chunk's offset
    chunk_runs: list[tuple[int, int]] = field(default_factory=list)  # stsc: (first chunk, samples per chunk)
    composition_offsets: bool = False  # a ctts
    edits: list[tuple[int, int, Fraction]] = field(default_factory=list)  # (duration, media time, rate)
    entry: bytes = b""  # the first sample entry's type
    codec: str | None = None
    width: int = 0
    height: int = 0
    sar: Fraction | None = None  # pasp
    sample_rate: int | None = None
    channels: int | None = None


def _full(data: bytes, body: int) -> int:
    """A full box's version."""
    return data[body]


def _esds_object_type(data: bytes, lo: int, hi: int) -> int | None:
    """The objectTypeIndication of the DecoderConfigDescriptor in an esds body."""
    pos = lo + 4  # version, flags

    def descriptor(pos: int) -> tuple[int, int, int]:
        tag, length, pos = data[pos], 0, pos + 1
        for _ in range(4):
            byte = data[pos]
            pos += 1
            length = length << 7 | byte & 0x7F
            if not byte & 0x80:
                break
        return tag, pos, length

    tag, pos, _ = descriptor(pos)
    if tag != 0x03:
        return None
    flags = data[pos + 2]
    pos += 3
    if flags & 0x80:
        pos += 2
    if flags & 0x40:
        pos += 1 + data[pos]
    if flags & 0x20:
        pos += 2
    tag, pos, _ = descriptor(pos)
    return data[pos] if tag == 0x04 and pos < hi else None


def _children(data: bytes, lo: int, hi: int, depth: int = 0) -> dict[bytes, tuple[int, int]]:
    """A sample entry's child boxes by type (also those inside a QuickTime `wave`)."""
    if depth > MAX_DEPTH:
        raise Unsure("boxes nested too deep")
    found: dict[bytes, tuple[int, int]] = {}
    for kind, body, end in boxes(data, lo, hi):
        if kind == b"wave":
            found.update({k: v for k, v in _children(data, body, end, depth + 1).items() if k not in found})
        found.setdefault(kind, (body, end))
    return found


def _sample_entry(data: bytes, lo: int, hi: int, track: Track) -> None:
    """The first entry of an stsd body: codec, and dimensions or audio parameters."""
    (count,) = struct.unpack_from(">I", data, lo + 4)
    if count < 1:
        raise Unsure("stsd without an entry")
    kind, body, end = next(boxes(data, lo + 8, hi))
    track.entry = kind
    if track.handler == b"vide":
        track.width, track.height = struct.unpack_from(">HH", data, body + 24)
        children = _children(data, body + 78, end)
        if b"pasp" in children:
            h, v = struct.unpack_from(">II", data, children[b"pasp"][0])
            track.sar = Fraction(h, v) if h and v else None
        if kind == b"mp4v" and b"esds" in children:
            track.codec = OBJECT_TYPES.get(_esds_object_type(data, *children[b"esds"]) or 0)
        else:
            track.codec = VIDEO_CODECS.get(kind)
    elif track.handler == b"soun":
        version, = struct.unpack_from(">H", data, body + 8)
        track.channels, = struct.unpack_from(">H", data, body + 16)
        track.sample_rate = struct.unpack_from(">I", data, body + 24)[0] >> 16
        fixed = {0: 28, 1: 44, 2: 64}.get(version)
        if fixed is None:
            raise Unsure(f"sound sample description version {version}")
        if version == 2:
            (rate,), track.channels = struct.unpack_from(">d", data, body + 32), struct.unpack_from(">I", data, body + 40)[0]
            track.sample_rate = int(rate)
        children = _children(data, body + fixed, end)
        if kind == b"mp4a" and b"esds" in children:
            track.codec = OBJECT_TYPES.get(_esds_object_type(data, *children[b"esds"]) or 0)
        else:
            track.codec = AUDIO_CODECS.get(kind)
    if track.codec is None and track.handler in (b"vide", b"soun"):
        raise Unsure(f"sample entry {kind!r}")


def _table(data: bytes, kind: bytes, body: int, end: int, track: Track) -> None:
    """One box of a track that matters here."""
    if kind == b"mdhd":
        if _full(data, body) == 1:
            track.timescale, track.media_duration = struct.unpack_from(">IQ", data, body + 20)
        else:
            track.timescale, track.media_duration = struct.unpack_from(">II", data, body + 12)
    elif kind == b"hdlr" and not track.handler:
        track.handler = bytes(data[body + 8:body + 12])
    elif kind == b"elst":
        version = _full(data, body)
        (count,) = struct.unpack_from(">I", data, body + 4)
        layout, step = (">QqhH", 20) if version == 1 else (">IihH", 12)
        if body + 8 + count * step > end:
            raise Unsure("elst runs past its box")
        for k in range(count):
            duration, media_time, whole, part = struct.unpack_from(layout, data, body + 8 + k * step)
            track.edits.append((duration, media_time, whole + Fraction(part, 65536)))
    elif kind == b"stts":
        pairs = table_entries(data, body, end, 8, "I", 2)
        track.sample_durations = sum(n * d for n, d in zip(pairs[::2], pairs[1::2], strict=True))
    elif kind == b"stsz":
        track.uniform_size, track.samples = struct.unpack_from(">II", data, body + 4)
        if not track.uniform_size:
            track.sizes = table_entries(data, body + 4, end, 8, "I", 1)
    elif kind in (b"stco", b"co64"):
        track.chunks = table_entries(data, body, end, 8, "I" if kind == b"stco" else "Q", 1)
    elif kind == b"stsc":
        runs = table_entries(data, body, end, 8, "I", 3)
        track.chunk_runs = list(zip(runs[::3], runs[1::3], strict=True))
    elif kind == b"ctts":
        track.composition_offsets = True
    elif kind == b"stz2":
        raise Unsure("compact sample sizes (stz2)")


def _media_end(track: Track) -> int:
    """Where the last byte of the track's media is: the end of its furthest chunk (stco/co64
    offsets, stsc samples per chunk, stsz sizes)."""
    if not track.chunks or not track.samples:
        return 0
    if track.sizes is not None:
        prefix = [0, *accumulate(track.sizes)]
        size = lambda a, b: prefix[b] - prefix[a]  # noqa: E731 - the bytes of samples a..b-1
    else:
        size = lambda a, b: (b - a) * track.uniform_size  # noqa: E731
    runs = track.chunk_runs or [(1, 0)]
    end = sample = 0
    for k, (first, per_chunk) in enumerate(runs):
        last = runs[k + 1][0] - 1 if k + 1 < len(runs) else len(track.chunks)
        if first < 1 or last > len(track.chunks):
            raise Unsure("stsc names chunks that stco does not list")
        for chunk in range(first - 1, last):
            stop = sample + per_chunk
            if stop > track.samples:
                raise Unsure("stsc lists more samples than stsz")
            if per_chunk:
                end = max(end, track.chunks[chunk] + size(sample, stop))
            sample = stop
    return end


def _track(data: bytes, lo: int, hi: int) -> Track:
    track = Track()
    stsd: tuple[int, int] | None = None

    def walk(lo: int, hi: int, depth: int = 0) -> None:
        nonlocal stsd
        if depth > MAX_DEPTH:
            raise Unsure("boxes nested too deep")
        for kind, body, end in boxes(data, lo, hi):
            if kind in CONTAINERS:
                walk(body, end, depth + 1)
            elif kind == b"stsd":
                stsd = (body, end)
            else:
                _table(data, kind, body, end, track)

    walk(lo, hi)
    if stsd is not None and track.handler in (b"vide", b"soun"):
        _sample_entry(data, *stsd, track)
    return track


def _rescale(value: int, to: int, from_: int) -> int:
    """av_rescale: value * to / from_, rounded half away from zero (values are not negative)."""
    return (value * to + from_ // 2) // from_


def _stream_timing(track: Track, movie_timescale: int) -> tuple[float, float]:
    """libavformat's (start time, duration) of the stream, in seconds, to ffprobe's 6 decimals
    (module doc). One edit, optionally after an empty edit (the stream starts that late)."""
    if not track.timescale:
        raise Unsure("a track without a time scale")
    ticks = track.media_duration
    if track.sample_durations:
        ticks = min(ticks, track.sample_durations)
    edits = track.edits
    if not edits and track.composition_offsets:
        raise Unsure("composition offsets without an edit list (the first frame is shown late)")
    empty = 0
    if edits and edits[0][1] == -1 and len(edits) == 2:
        empty, edits = edits[0][0], edits[1:]
    if len(edits) > 1:
        raise Unsure(f"{len(track.edits)} edits")
    if edits:
        duration, media_time, rate = edits[0]
        if media_time < 0 or rate != 1:
            raise Unsure("an empty edit where media was expected, or a rate other than 1")
        if not movie_timescale:
            raise Unsure("a movie without a time scale")
        ticks = min(ticks, _rescale(duration, track.timescale, movie_timescale))
    start = _rescale(empty, track.timescale, movie_timescale) if empty else 0
    return _seconds(start, track.timescale), _seconds(ticks, track.timescale)


def _seconds(ticks: int, timescale: int) -> float:
    """What ffprobe prints for `ticks` in a 1/timescale time base: "%f" of ticks * av_q2d(tb)
    (a product with the rounded reciprocal, which rounds some ties the other way than a
    division), read back as a float, as media_info_from_json reads it."""
    return float("%f" % (ticks * (1.0 / timescale)))


def _timing(track: Track, movie_timescale: int) -> dict[str, float]:
    start, duration = _stream_timing(track, movie_timescale)
    return {"start_time": start, "duration": duration}


def read_index(path: Path, *, need_sar: bool = False) -> MediaInfo:
    """The MediaInfo of an MP4/MOV/M4A we wrote, from its moov (module doc); Unsure when the
    file holds something this does not model. `need_sar`: the sample aspect ratio will be
    checked, so a video without `pasp` (ffprobe would read the codec's own) is Unsure."""
    data, file_size = read_moov(path)
    try:
        return _media_info(data, file_size, need_sar)
    except (struct.error, IndexError, StopIteration, ZeroDivisionError, ValueError, OverflowError,
            RecursionError, MemoryError) as exc:
        raise Unsure(f"unreadable index: {exc!r}") from None


def _media_info(data: bytes, file_size: int, need_sar: bool) -> MediaInfo:
    movie_timescale = movie_duration = 0
    tracks: list[Track] = []
    for kind, body, end in boxes(data, 0, len(data)):
        if kind == b"mvhd":
            if _full(data, body) == 1:
                movie_timescale, movie_duration = struct.unpack_from(">IQ", data, body + 20)
            else:
                movie_timescale, movie_duration = struct.unpack_from(">II", data, body + 12)
        elif kind == b"trak":
            tracks.append(_track(data, body, end))
        elif kind == b"mvex":
            raise Unsure("a fragmented MP4")
    if not movie_timescale or not movie_duration:
        raise Unsure("no movie duration")
    if b"covr" in data:
        raise Unsure("cover art (ffprobe counts it as a stream)")
    if any(_media_end(t) > file_size for t in tracks):
        raise Broken("its index lists samples past the end of the file (a truncated file)")
    videos = [t for t in tracks if t.handler == b"vide"]
    audios = [t for t in tracks if t.handler == b"soun"]
    # tracks are numbered in file order, as ffprobe's stream indexes
    index = {id(t): k for k, t in enumerate(tracks)}
    video = audio = None
    if videos:
        v = videos[0]
        if v.sar is None and need_sar:
            raise Unsure("no pasp box: the sample aspect ratio is the codec's")
        video = VideoStream(index=index[id(v)], codec=v.codec or "unknown", profile=None, level=None, pix_fmt=None,
                            width=v.width, height=v.height, fps=None, time_base=Fraction(1, v.timescale or 1),
                            has_b_frames=0, field_order=None, frames=v.samples, sar=v.sar or Fraction(1),
                            **_timing(v, movie_timescale))
    if audios:
        a = audios[0]
        audio = AudioStream(index=index[id(a)], codec=a.codec or "unknown", profile=None, sample_rate=a.sample_rate,
                            channels=a.channels, **_timing(a, movie_timescale))
    # av_rescale(duration, AV_TIME_BASE, time_scale), printed to 6 decimals
    duration = _seconds(_rescale(movie_duration, 1_000_000, movie_timescale), 1_000_000)
    # the container starts with its earliest stream (every track's timing must then be known)
    start = min((_stream_timing(t, movie_timescale)[0] for t in tracks if t.timescale), default=0.0)
    return MediaInfo(format_name=FORMAT_NAME, duration=duration, size=file_size, video=video, audio=audio,
                     video_streams=len(videos), audio_streams=len(audios), start_time=start, streams=len(tracks))
