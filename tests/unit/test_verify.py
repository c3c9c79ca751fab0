"""Output verification: the pure comparison, and the file checks that need no ffmpeg."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from clipper.errors import PermanentError, TransientError
from clipper.jobs.probe import AudioStream, MediaInfo, VideoStream
from clipper.jobs.verify import check_media, verify_image, verify_output


def info(duration: float = 10.0, video: bool = True, audio: bool = True, w: int = 640, h: int = 360,
         vcodec: str = "h264", acodec: str = "aac") -> MediaInfo:
    v = VideoStream(0, vcodec, "High", 31, "yuv420p", w, h, Fraction(30), Fraction(1, 15360), 2, "progressive", 300)
    a = AudioStream(1, acodec, "LC", 48000, 2)
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
    monkeypatch.setattr("clipper.jobs.verify.probe_media", lambda *a, **k: info(duration=3.1))
    with pytest.raises(PermanentError, match=r"clip \(a\): bad output: duration 3.100 s vs 10.000 s expected ±2"):
        verify_output(junk, expect_video=True, expect_audio=True, duration=10, tolerance=2, what="clip (a)")
