"""The pure planning of a clip against its media: where the video ends, how long each output
stream must be, the keyframe lead-in a copy clip may carry, and where a re-encode seeks."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

import clipper.media.seek as seek_module
from clipper.errors import PermanentError
from clipper.jobs.clip import expected_stream_lengths, resolve_range
from clipper.jobs.probe import AudioStream, MediaInfo, Packet, VideoStream
from clipper.jobs.spec import ClipSpec
from clipper.media.command import JobControl
from clipper.media.seek import (
    BISECT_PREROLL,
    DTS_SEEK_SHIFT,
    Seek,
    copy_seek_target,
    find_keyframe_before,
    keyframe_before,
    keyframe_seek_target,
    keyframes_from_csv,
    lead_in_from_packets,
    plan_accurate_seek,
)


def source(video_end: float | None = 6.0, audio_end: float | None = 11.0, *, video_start: float = 0.0,
           audio_start: float = 0.0, fmt: str = "mov,mp4,m4a,3gp,3g2,mj2", b_frames: int = 2,
           start_time: float = 0.0) -> MediaInfo:
    """Video [video_start, video_end), audio [audio_start, audio_end), in clip time."""
    v = VideoStream(0, "h264", "High", 31, "yuv420p", 320, 240, Fraction(30), Fraction(1, 15360), b_frames,
                    "progressive", None, start_time=video_start + start_time,
                    duration=None if video_end is None else video_end - video_start)
    a = AudioStream(1, "aac", "LC", 48000, 2, start_time=audio_start + start_time,
                    duration=None if audio_end is None else audio_end - audio_start)
    duration = max(e for e in (video_end, audio_end, 1.0) if e is not None)
    return MediaInfo(fmt, duration, 1000, v, a, 1, 1, start_time)


def clip(start: float, end: float, fmt: str = "mp4") -> ClipSpec:
    return ClipSpec("c", start, end, "accurate", fmt)


# -- where a clip with video ends ------------------------------------------------------------

def test_video_formats_end_with_the_video_not_the_longer_audio() -> None:
    r = resolve_range(clip(4, 10), source())
    assert (r.start, r.end) == (4, 6.0) and r.note == "end 10 s is past the end of the video; clamped to 6.000 s"


def test_start_past_the_video_is_permanent_even_with_audio_left() -> None:
    with pytest.raises(PermanentError, match=r"clip \(c\): start 8 s is past the end of the video \(6.000 s\)"):
        resolve_range(clip(8, 10), source())


def test_start_after_the_last_frame_is_permanent() -> None:
    # 20 s of 30 fps video: the last frame is at 19.967; 19.99-20.5 would hold no frame
    with pytest.raises(PermanentError, match=r"start 19.99 s is after the last video frame \(at 19.967 s; "
                                             r"the video ends at 20.000 s\)"):
        resolve_range(clip(19.99, 20.5), source(video_end=20.0, audio_end=21.0))
    r = resolve_range(clip(19.96, 20.5), source(video_end=20.0, audio_end=21.0))  # the last frame, within slack
    assert (r.start, r.end) == (19.96, 20.0)


def test_audio_formats_end_with_the_media() -> None:
    r = resolve_range(clip(8, 10, "m4a"), source())
    assert (r.start, r.end, r.note) == (8, 10, None)


def test_unknown_video_end_falls_back_to_the_media() -> None:
    info = source(video_end=None)
    assert info.video_end is None
    assert resolve_range(clip(8, 10), info).end == 10
    with pytest.raises(PermanentError, match=r"past the end of the media \(11.000 s\)"):
        resolve_range(clip(11, 12), info)


# -- how long each output stream must be -----------------------------------------------------

def test_expected_stream_lengths_follow_what_the_source_covers() -> None:
    late = source(video_end=8.0, audio_end=8.0, video_start=1.0)
    assert expected_stream_lengths(late, 0, 6) == (5.0, 6.0)
    assert expected_stream_lengths(late, 2, 6) == (4.0, 4.0)
    short_audio = source(video_end=12.0, audio_end=5.0)
    assert expected_stream_lengths(short_audio, 3, 8) == (5.0, 2.0)
    assert expected_stream_lengths(short_audio, 6, 8) == (2.0, 0.0)


def test_expected_stream_lengths_use_clip_time() -> None:
    info = source(video_end=8.0, audio_end=8.0, start_time=1.4)  # e.g. a TS: the container starts at 1.4
    assert expected_stream_lengths(info, 2, 6) == (4.0, 4.0)


def test_unknown_stream_durations_are_not_checked() -> None:
    assert expected_stream_lengths(source(video_end=None, audio_end=None), 0, 5) == (None, None)


# -- the lead-in of a copy clip --------------------------------------------------------------

def packets(*keys: float, fps: int = 30, until: float = 30.0) -> list[Packet]:
    n = int(until * fps)
    return [Packet(i / fps, any(abs(i / fps - k) < 1e-9 for k in keys)) for i in range(n)]


def test_lead_in_is_from_the_keyframe_at_or_before_the_cut() -> None:
    gop2 = packets(0, 2, 4, 6, 8)
    assert lead_in_from_packets(gop2, 3.3, 3.3) == pytest.approx(1.3)
    assert lead_in_from_packets(gop2, 4.0, 4.0) == pytest.approx(0.0)
    assert lead_in_from_packets(gop2, 3.9999, 4.0) == pytest.approx(0.0)  # within the slack: at it


def test_lead_in_of_a_long_gop_is_the_whole_distance() -> None:
    assert lead_in_from_packets(packets(0, 25, until=40), 24.5, 24.5) == pytest.approx(24.5)


def test_lead_in_when_the_seek_target_is_before_the_first_keyframe() -> None:
    assert lead_in_from_packets(packets(0, 2), -0.1, 0.03) == pytest.approx(0.03)
    assert lead_in_from_packets([], 1.0, 1.0) == 0.0


def test_copy_seek_target_follows_ffmpegs_dts_heuristic() -> None:
    assert copy_seek_target(source(), 2.05) == 2.05  # MP4 seeks by PTS
    mkv = source(fmt="matroska,webm")
    assert copy_seek_target(mkv, 2.05) == pytest.approx(2.05 - DTS_SEEK_SHIFT)
    assert copy_seek_target(source(fmt="matroska,webm", b_frames=0), 2.05) == 2.05


def test_clip_ending_before_the_video_starts_is_permanent() -> None:
    late = source(video_end=8.0, audio_end=8.0, video_start=1.0)
    with pytest.raises(PermanentError, match=r"clip \(c\): end 0.5 s is before the video starts \(1.000 s\)"):
        resolve_range(clip(0, 0.5), late)
    assert resolve_range(clip(0, 0.5, "m4a"), late).end == 0.5
    assert resolve_range(clip(0, 1.5), late).end == 1.5


# -- where a re-encode seeks: decode from the keyframe at/before start, trim on the output ------

MP4, MKV, TS, AVI = "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "mpegts", "avi"


def test_each_demuxer_is_aimed_to_land_on_the_keyframe() -> None:
    # MP4 lands on the last keyframe whose DTS is at/before the target: just past its PTS
    assert keyframe_seek_target(source(), 4.0666667) == pytest.approx(4.0686667)
    # Matroska on the last whose PTS is at/before the target less 3/23 s (with B-frames)
    assert keyframe_seek_target(source(fmt=MKV), 4.021) == pytest.approx(4.023 + DTS_SEEK_SHIFT)
    assert keyframe_seek_target(source(fmt=MKV, b_frames=0), 4.021) == pytest.approx(4.023)
    # MPEG-TS, AVI, ...: may bisect on DTS and resume at the next keyframe, so well before it
    assert keyframe_seek_target(source(fmt=TS), 4.021) == pytest.approx(4.021 - BISECT_PREROLL)
    assert keyframe_seek_target(source(fmt=AVI), 4.0) == pytest.approx(4.0 - BISECT_PREROLL)


def test_accurate_seek_decodes_from_the_keyframe_and_trims_the_rest() -> None:
    # MP4 without an edit list: keyframe at 2.0667, start between the frames 4.0 and 4.0333
    assert plan_accurate_seek(source(), 4.0195, 2.0666667) == Seek(2.068, 1.9515)
    assert plan_accurate_seek(source(fmt=MKV), 4.0195, 2.021) == Seek(2.153, 1.8665)
    assert plan_accurate_seek(source(fmt=TS), 4.0195, 2.021) == Seek(1.021, 2.9985)


def test_accurate_seek_parts_add_up_to_start_in_microseconds() -> None:
    for start in (4.0195, 1 / 3, 7 / 30 - 0.0005, 3600.123456):
        seek = plan_accurate_seek(source(video_end=4000.0), start, 0.1)
        assert seek.input is not None and seek.output is not None
        assert round(seek.input * 1e6) % 1000 == 0  # a whole millisecond: exact in the usual time bases
        assert round(seek.input * 1e6) + round(seek.output * 1e6) == round(start * 1e6)


def test_accurate_seek_from_the_keyframe_itself_needs_no_trim() -> None:
    # a cut on (or within the aim of) the keyframe: as before, input-side at start
    assert plan_accurate_seek(source(), 3.9995, 4.0) == Seek(3.9995, None)
    assert plan_accurate_seek(source(), 4.001, 4.0) == Seek(4.001, None)


def test_accurate_seek_keeps_the_rules_of_plan_seek() -> None:
    late = source(video_end=8.0, audio_end=8.0, video_start=1.0)
    assert plan_accurate_seek(late, 0, 1.0) == Seek(None, None)  # from 0: no -ss at all
    assert plan_accurate_seek(late, 0.5, None) == Seek(None, 0.5)  # before the video: output side
    assert plan_accurate_seek(late, 2.5, None) == Seek(None, 2.5)  # no keyframe found: from the file start
    # aimed before the video would start: from the file start too (no audio is lost that way)
    assert plan_accurate_seek(source(fmt=TS, video_end=8.0, audio_end=8.0, video_start=1.0), 2.5, 1.0) == Seek(None, 2.5)
    assert plan_accurate_seek(late, 2.5, 1.0) == Seek(1.002, 1.498)
    assert plan_accurate_seek(late, 4.5, 3.0) == Seek(3.002, 1.498)


def test_accurate_seek_is_in_clip_time() -> None:
    # container start 1.479 (video from 1.5): the keyframe at 5.5 on the file's clock is at
    # 4.021 in clip time, where -ss counts (ffmpeg adds the start time)
    offset = source(fmt=MKV, start_time=1.479, video_start=0.021, video_end=8.0)
    assert plan_accurate_seek(offset, 6.5195, 4.021) == Seek(4.153, 2.3665)


def test_keyframes_from_csv_take_pts_else_dts() -> None:
    text = "2.066667,2.000000,K_\n2.166667,2.033333,__\nN/A,4.000000,K_\n4.900000,4.833333,K_,\n\nN/A,N/A,K_\n"
    assert keyframes_from_csv(text) == [2.066667, 4.0, 4.9]
    assert keyframe_before([2.066667, 4.066667, 6.066667], 4.02) == 2.066667
    assert keyframe_before([2.066667, 4.066667], 4.0662) == 4.066667  # within the slack: at it
    assert keyframe_before([4.066667], 4.0) is None


def test_keyframe_search_reads_further_back_until_the_video_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[tuple[float, float]] = []

    def index(keys: list[float]):
        def read(src, stream, lo, hi, *, control):
            reads.append((round(lo, 6), round(hi, 6)))
            return [k for k in keys if k >= lo - 0.5]  # a bisecting demuxer: only what follows the position
        return read

    # a TS on the file's clock from 1.4: keyframes every 10 s from the video start at 1.5
    ts = source(fmt=TS, start_time=1.4, video_start=0.1, video_end=60.0)
    monkeypatch.setattr(seek_module, "read_keyframes", index([1.5, 11.5, 21.5, 31.5]))
    assert find_keyframe_before(Path("/s.ts"), ts, 28.6, control=JobControl()) == pytest.approx(20.1)
    assert reads == [(29.0, 30.5), (26.0, 30.5), (14.0, 30.5)]
    reads.clear()
    monkeypatch.setattr(seek_module, "read_keyframes", index([]))  # no keyframe at all
    assert find_keyframe_before(Path("/s.ts"), ts, 28.6, control=JobControl()) is None
    assert reads == [(29.0, 30.5), (26.0, 30.5), (14.0, 30.5), (-34.0, 30.5)]  # the last from the file start
