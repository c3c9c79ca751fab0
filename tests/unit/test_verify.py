"""Output verification: the pure comparison, and the file checks that need no ffmpeg."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from clipper.errors import PermanentError, TransientError
from clipper.jobs.probe import AudioStream, MediaInfo, VideoStream, media_info_from_json, tag_duration
from clipper.media.verify import check_media, verify_image, verify_output


def info(duration: float = 10.0, video: bool = True, audio: bool = True, w: int = 640, h: int = 360,
         vcodec: str = "h264", acodec: str = "aac", sar: Fraction = Fraction(1), video_duration: float | None = None,
         audio_duration: float | None = None) -> MediaInfo:
    v = VideoStream(0, vcodec, "High", 31, "yuv420p", w, h, Fraction(30), Fraction(1, 15360), 2, "progressive", 300,
                    sar=sar, duration=video_duration)
    a = AudioStream(1, acodec, "LC", 48000, 2, duration=audio_duration)
    return MediaInfo("mov,mp4", duration, 1000, v if video else None, a if audio else None, int(video), int(audio))


def test_a_good_output_has_no_problems() -> None:
    assert check_media(info(), expect_video=True, expect_audio=True, duration=10.02, tolerance=0.1, width=640,
                       height=360, codec="h264", audio_codec="aac") == []


def test_missing_and_unexpected_streams() -> None:
    assert check_media(info(audio=False), expect_video=True, expect_audio=True, duration=None, tolerance=0) == \
        ["no audio stream"]
    assert check_media(info(video=False), expect_video=True, expect_audio=True, duration=None, tolerance=0) == \
        ["no video stream"]
    assert check_media(info(), expect_video=False, expect_audio=True, duration=None, tolerance=0) == \
        ["an unexpected video stream (h264)"]


def test_duration_message_says_by_how_much() -> None:
    assert check_media(info(duration=3.1), expect_video=True, expect_audio=True, duration=10, tolerance=2.0) == \
        ["duration 3.100 s vs 10.000 s expected ±2"]


def test_overshoot_allows_more_above_than_below() -> None:
    kw = dict(expect_video=True, expect_audio=True, duration=10, tolerance=0.5, overshoot=20)
    assert check_media(info(duration=11.7), **kw) == []
    assert check_media(info(duration=9.4), **kw) == ["duration 9.400 s vs 10.000 s expected -0.5/+20"]


def test_dimensions_and_codecs() -> None:
    problems = check_media(info(w=320, h=180, vcodec="hevc", acodec="opus"), expect_video=True, expect_audio=True,
                           duration=None, tolerance=0, width=640, height=360, codec="h264", audio_codec="aac")
    assert problems == ["dimensions 320x180 vs 640x360 expected", "video codec hevc vs h264 expected",
                        "audio codec opus vs aac expected"]


def test_only_one_dimension_checked() -> None:
    assert check_media(info(w=320, h=180), expect_video=True, expect_audio=True, duration=None, tolerance=0,
                       height=180) == []


def test_missing_or_empty_file_is_transient(tmp_path: Path) -> None:
    with pytest.raises(TransientError, match=r"clip \(a\): ffmpeg wrote no output file"):
        verify_output(tmp_path / "nope.mp4", expect_video=True, expect_audio=True, duration=1, tolerance=1,
                      what="clip (a)")
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(TransientError, match="empty output file"):
        verify_output(empty, expect_video=True, expect_audio=True, duration=1, tolerance=1)
    with pytest.raises(TransientError, match="empty output file"):
        verify_image(empty, width=1, height=1, codec="mjpeg")


def test_garbage_output_is_reported_unreadable(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(TransientError, match="unreadable"):
        verify_output(junk, expect_video=True, expect_audio=True, duration=1, tolerance=1)


def test_wrong_output_is_permanent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    junk = tmp_path / "short.mp4"
    junk.write_bytes(b"x")
    monkeypatch.setattr("clipper.media.verify.probe_output", lambda *a, **k: info(duration=3.1))
    with pytest.raises(PermanentError, match=r"clip \(a\): bad output: duration 3.100 s vs 10.000 s expected ±2"):
        verify_output(junk, expect_video=True, expect_audio=True, duration=10, tolerance=2, what="clip (a)")


# -- each stream's own duration ---------------------------------------------------------------

def test_a_truncated_audio_stream_fails_although_the_container_is_long_enough() -> None:
    # the container lasts as long as its longest stream: video 6.0, audio lost its first 0.88 s
    out = info(duration=6.016, video_duration=5.0, audio_duration=5.12)
    problems = check_media(out, expect_video=True, expect_audio=True, duration=6, tolerance=0.1, video_duration=5.0,
                           audio_duration=6.0)
    assert problems == ["audio stream lasts 5.120 s vs 6.000 s expected ±0.1 (0.880 s short)"]


def test_stream_durations_use_the_same_bounds_as_the_container() -> None:
    out = info(duration=7.4, video_duration=7.4, audio_duration=7.3)
    kw = dict(expect_video=True, expect_audio=True, duration=6, tolerance=0.5, overshoot=1.8)
    assert check_media(out, **kw, video_duration=6, audio_duration=6) == []
    assert check_media(out, **kw, video_duration=5, audio_duration=6) == \
        ["video stream lasts 7.400 s vs 5.000 s expected -0.5/+1.8 (2.400 s long)"]


def test_a_source_whose_audio_is_shorter_passes_when_the_expectation_says_so() -> None:
    out = info(duration=5.0, video_duration=5.0, audio_duration=2.01)
    assert check_media(out, expect_video=True, expect_audio=True, duration=5, tolerance=0.1, video_duration=5,
                       audio_duration=2.0) == []


def test_unknown_stream_durations_are_not_checked() -> None:
    assert check_media(info(duration=6.0), expect_video=True, expect_audio=True, duration=6, tolerance=0.1,
                       video_duration=5.0, audio_duration=6.0) == []


def test_square_pixels() -> None:
    wide = info(sar=Fraction(32, 27))
    assert check_media(wide, expect_video=True, expect_audio=True, duration=None, tolerance=0, square_pixels=True) == \
        ["sample aspect ratio 32:27 vs 1:1 expected"]
    assert check_media(wide, expect_video=True, expect_audio=True, duration=None, tolerance=0) == []


def test_matroska_duration_tags_fill_missing_stream_durations() -> None:
    assert tag_duration({"tags": {"DURATION": "00:00:05.213000000"}}) == pytest.approx(5.213)
    assert tag_duration({"tags": {"duration": "01:02:03.5"}}) == pytest.approx(3723.5)
    assert tag_duration({"tags": {"DURATION": "junk"}}) is None and tag_duration({}) is None
    data = {"format": {"format_name": "matroska,webm", "duration": "5.213"},
            "streams": [{"index": 0, "codec_type": "video", "codec_name": "h264", "width": 320, "height": 240,
                         "tags": {"DURATION": "00:00:05.213000000"}},
                        {"index": 1, "codec_type": "audio", "codec_name": "aac", "duration": "4.5",
                         "tags": {"DURATION": "00:00:05.141000000"}}]}
    out = media_info_from_json(data)
    assert out.video.duration == pytest.approx(5.213)
    assert out.audio.duration == pytest.approx(4.5)  # the stream's own duration wins


def test_audio_may_be_optional() -> None:
    """None: the source has no audio in the clip's range, so an audio stream may or may not be there."""
    kw = dict(expect_video=True, expect_audio=None, duration=None, tolerance=0)
    assert check_media(info(audio=False), **kw) == [] and check_media(info(), **kw) == []
