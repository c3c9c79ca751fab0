"""make_clip against real ffmpeg: every sensible mode x format, checked with ffprobe (codec,
dimensions, duration), frame exactness of accurate clips, and the permanent errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from mediacheck import assert_frame_exact, decode_errors, ffprobe_json

from clipper.errors import Cancelled, PermanentError
from clipper.jobs.clip import make_clip
from clipper.jobs.spec import ClipSpec


def clip(src, start, end, tmp_path, media, control, mode="accurate", fmt="mp4", explicit=True, **kw):
    spec = ClipSpec("c", start, end, mode, fmt, mode_was_explicit=explicit, **kw)
    return make_clip(src.path, src.info, spec, tmp_path, media, threads=0, control=control, timeout=120)


def streams(path: Path) -> dict[str, dict]:
    return {s["codec_type"]: s for s in ffprobe_json(path, "-show_streams")["streams"]}


# -- copy --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("fmt", "container"), [("mp4", "mov,mp4"), ("mkv", "matroska"), ("m4a", "mov,mp4")])
def test_copy_formats(sources, fmt: str, container: str, tmp_path: Path, media, control) -> None:
    src = sources["gop2"]
    r = clip(src, 3.3, 8.3, tmp_path, media, control, mode="copy", fmt=fmt)
    assert r.mode == "copy" and r.note is None and r.path == tmp_path / f"c.{fmt}"
    assert r.info.format_name.startswith(container)
    s = streams(r.path)
    assert s["audio"]["codec_name"] == "aac"
    if fmt == "m4a":
        assert "video" not in s and abs(r.info.duration - 5) < 0.1
    else:
        assert s["video"]["codec_name"] == "h264" and (s["video"]["width"], s["video"]["height"]) == (320, 180)
        # mp4: the edit list hides the lead-in from the keyframe at 2 s; mkv shows it
        lead_in = 0 if fmt == "mp4" else 1.3
        assert 5 + lead_in - 0.05 <= r.info.duration <= 5 + lead_in + 0.25, r.info.duration
    assert decode_errors(r.path) == ""


def test_copy_mp4_has_faststart(sources, tmp_path: Path, media, control) -> None:
    r = clip(sources["gop2"], 1, 4, tmp_path, media, control, mode="copy")
    head = r.path.read_bytes()[:4096]
    assert head.find(b"moov") < head.find(b"mdat") or b"mdat" not in head


def test_copy_end_past_the_media_is_clamped(sources, tmp_path: Path, media, control) -> None:
    r = clip(sources["gop2"], 9, 20, tmp_path, media, control, mode="copy")
    assert "clamped to 12.000 s" in r.note and abs(r.info.duration - 3) < 0.15


def test_copy_of_a_video_only_source(sources, tmp_path: Path, media, control) -> None:
    r = clip(sources["noaudio"], 2, 6, tmp_path, media, control, mode="copy")
    assert r.info.audio is None and r.info.video.codec == "h264"


def test_copy_impossible_explicit_is_permanent_implicit_reencodes(sources, tmp_path: Path, media, control) -> None:
    src = sources["mp3"]
    with pytest.raises(PermanentError,
                       match=r"clip \(c\): mode copy is impossible: m4a copy needs AAC audio, the source has mp3"):
        clip(src, 1, 3, tmp_path, media, control, mode="copy", fmt="m4a")
    r = clip(src, 1, 3, tmp_path, media, control, mode="copy", fmt="m4a", explicit=False)
    assert r.mode == "accurate" and "m4a copy needs AAC" in r.note and r.info.audio.codec == "aac"


# -- accurate ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("fmt", "vcodec", "acodec", "container"), [
    ("mp4", "h264", "aac", "mov,mp4"),
    ("mkv", "h264", "aac", "matroska"),
    ("webm", "vp9", "opus", "matroska,webm"),
    ("gif", "gif", None, "gif"),
    ("m4a", None, "aac", "mov,mp4"),
    ("mp3", None, "mp3", "mp3"),
])
def test_accurate_formats(sources, fmt, vcodec, acodec, container, tmp_path: Path, media, control) -> None:
    src = sources["gop2"]
    r = clip(src, 2.5, 5.5, tmp_path, media, control, fmt=fmt)
    assert r.mode == "accurate" and r.path == tmp_path / f"c.{fmt}"
    assert r.info.format_name.startswith(container)
    s = streams(r.path)
    assert s.get("video", {}).get("codec_name") == vcodec
    assert s.get("audio", {}).get("codec_name") == acodec
    assert abs(r.info.duration - 3) <= 0.1, r.info.duration
    if vcodec:
        assert (s["video"]["width"], s["video"]["height"]) == (320, 180)
        if fmt != "gif":
            assert s["video"]["pix_fmt"] == "yuv420p"
    assert decode_errors(r.path) == ""


@pytest.mark.parametrize("source", ["gop2", "ntsc", "gop2_mkv"])
def test_accurate_is_frame_exact(sources, source: str, tmp_path: Path, media, control) -> None:
    src = sources[source]
    start, end = 2.9, 5.05
    r = clip(src, start, end, tmp_path, media, control)
    assert_frame_exact(r.path, src, start, end)


def test_accurate_start_given_as_a_rounded_frame_time(sources, tmp_path: Path, media, control) -> None:
    src = sources["gop2"]
    r = clip(src, round(7 / 30, 4), round(67 / 30, 4), tmp_path, media, control)  # 0.2333 .. 2.2333
    assert_frame_exact(r.path, src, 7 / 30, 67 / 30)


@pytest.mark.parametrize(("kw", "size"), [
    ({"height": 90}, (160, 90)),
    ({"width": 101}, (100, 56)),
    ({"width": 100, "height": 100}, (100, 56)),
    ({"max": 64}, (64, 36)),
    ({"width": 640}, (320, 180)),  # no upscale...
    ({"width": 640, "upscale": True}, (640, 360)),  # ...unless asked
])
def test_accurate_resize(sources, kw: dict, size: tuple[int, int], tmp_path: Path, media, control) -> None:
    r = clip(sources["gop2"], 1, 2, tmp_path, media, control, **kw)
    assert (r.info.video.width, r.info.video.height) == size


def test_gif_width_is_capped_and_fps_reduced(sources, tmp_path: Path, media, control) -> None:
    m = media.model_copy(update={"gif_max_width": 200, "gif_fps": 10})
    r = clip(sources["gop2"], 1, 3, tmp_path, m, control, fmt="gif")
    v = streams(r.path)["video"]
    assert (v["width"], v["height"]) == (200, 112)
    assert v["avg_frame_rate"] in ("10/1", "10")


def test_rotated_source_is_rotated_when_reencoded(sources, tmp_path: Path, media, control) -> None:
    r = clip(sources["rotated"], 0.5, 2.5, tmp_path, media, control, max=160)
    assert (r.info.video.width, r.info.video.height) == (90, 160)


def test_webm_from_a_video_only_source(sources, tmp_path: Path, media, control) -> None:
    r = clip(sources["noaudio"], 1, 2, tmp_path, media, control, fmt="webm")
    assert r.info.audio is None and r.info.video.codec == "vp9"


def test_audio_only_source_to_audio_formats(sources, tmp_path: Path, media, control) -> None:
    r = clip(sources["m4a"], 1, 3, tmp_path, media, control, mode="copy", fmt="m4a")
    assert r.info.audio.codec == "aac" and r.info.video is None
    r = clip(sources["m4a"], 1, 3, tmp_path, media, control, fmt="mp3")
    assert r.info.audio.codec == "mp3" and abs(r.info.duration - 2) < 0.1


# -- errors ------------------------------------------------------------------------------------

def test_start_past_the_end_is_permanent(sources, tmp_path: Path, media, control) -> None:
    with pytest.raises(PermanentError, match=r"start 100 s is past the end of the video \(12.000 s\)"):
        clip(sources["gop2"], 100, 110, tmp_path, media, control, mode="copy")


def test_video_format_from_an_audio_only_source_is_permanent(sources, tmp_path: Path, media, control) -> None:
    with pytest.raises(PermanentError, match="format mp4 needs video, the source is audio only"):
        clip(sources["m4a"], 1, 2, tmp_path, media, control)


def test_audio_format_from_a_video_only_source_is_permanent(sources, tmp_path: Path, media, control) -> None:
    with pytest.raises(PermanentError, match="format mp3 needs audio, the source has none"):
        clip(sources["noaudio"], 1, 2, tmp_path, media, control, fmt="mp3")


def test_failed_clip_leaves_no_file(sources, tmp_path: Path, media, control) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(sources["gop2"].path.read_bytes()[:20000])  # truncated: moov at the front, no media
    src = sources["gop2"]
    spec = ClipSpec("c", 5, 9, "accurate", "mp4")
    with pytest.raises((PermanentError,)):
        make_clip(bad, src.info, spec, tmp_path, media, threads=0, control=control, timeout=60)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mp4"]


def test_timeout_is_permanent_and_cancel_is_honoured(sources, tmp_path: Path, media, control) -> None:
    src = sources["gop2"]
    spec = ClipSpec("c", 0, 12, "accurate", "webm")
    with pytest.raises(PermanentError, match="timed out .* the same input would time out again"):
        make_clip(src.path, src.info, spec, tmp_path, media, threads=0, control=control, timeout=0.05)
    control.cancel()
    for mode in ("copy", "accurate", "smart"):
        with pytest.raises(Cancelled):
            make_clip(src.path, src.info, ClipSpec("c", 1, 9, mode, "mp4"), tmp_path, media, threads=0,
                      control=control, timeout=60)
    assert list(tmp_path.iterdir()) == []
