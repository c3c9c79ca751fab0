"""Smart cut against real ffmpeg: frame-exact (count, content, clean decode) across GOP
sizes, B-frames on/off, NTSC rates, Matroska sources and outputs, and cut points on and
between keyframes; and the fallbacks to a full re-encode, each with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from mediacheck import Source, assert_frame_exact, ffprobe_json

from clipper.jobs.clip import make_clip
from clipper.jobs.spec import ClipSpec


def smart(src: Source, start: float, end: float, tmp_path: Path, media, control, fmt: str = "mp4", **kw):
    clip = ClipSpec("s", start, end, "smart", fmt, mode_was_explicit=True, **kw)
    return make_clip(src.path, src.info, clip, tmp_path, media, threads=0, control=control, timeout=120)


def cut_points(gop: float, fps: float = 30.0) -> dict[str, tuple[float, float]]:
    """(start, end) with each end on a keyframe or between keyframes (off by a few frames)."""
    f = 1 / fps
    return {
        "on-on": (gop, 4 * gop),
        "on-between": (gop, 4 * gop + 5 * f),
        "between-on": (gop + 7 * f, 4 * gop),
        "between-between": (gop - 3 * f, 4 * gop + 0.37),
    }


@pytest.mark.parametrize("source", ["gop2", "gop1", "gop05", "gop2_nob"])
@pytest.mark.parametrize("where", ["on-on", "on-between", "between-on", "between-between"])
def test_smart_cut_is_frame_exact(sources, source: str, where: str, tmp_path: Path, media, control) -> None:
    src = sources[source]
    start, end = cut_points(src.gop)[where]
    if src.gop < 1:  # keep clips at least a few GOPs and a couple of seconds long
        start, end = start + 1, end + 2
    r = smart(src, start, end, tmp_path, media, control)
    assert r.mode == "smart", r.note
    assert r.path == tmp_path / "s.mp4" and r.info.video.codec == "h264" and r.info.audio.codec == "aac"
    assert abs(r.info.duration - (end - start)) <= 1 / 30 + 0.03
    assert_frame_exact(r.path, src, start, end)


@pytest.mark.parametrize(("source", "fmt"), [("ntsc", "mp4"), ("ntsc", "mkv"), ("gop2", "mkv")])
def test_smart_cut_other_rates_and_containers(sources, source: str, fmt: str, tmp_path: Path, media, control) -> None:
    src = sources[source]
    start, end = 2.9, 9.05
    r = smart(src, start, end, tmp_path, media, control, fmt=fmt)
    assert r.mode == "smart", r.note
    assert r.path.suffix == f".{fmt}"
    assert_frame_exact(r.path, src, start, end)


def test_smart_cut_without_audio(sources, tmp_path: Path, media, control) -> None:
    src = sources["noaudio"]
    r = smart(src, 1.5, 7.2, tmp_path, media, control)
    assert r.mode == "smart" and r.info.audio is None
    assert_frame_exact(r.path, src, 1.5, 7.2)


def test_smart_cut_to_the_end_of_the_media_clamps(sources, tmp_path: Path, media, control) -> None:
    src = sources["gop2"]
    r = smart(src, 5.3, 40, tmp_path, media, control)
    assert r.mode == "smart" and "clamped" in r.note
    assert_frame_exact(r.path, src, 5.3, src.info.duration)


def test_audio_is_continuous_and_in_sync(sources, tmp_path: Path, media, control) -> None:
    src = sources["gop2"]
    r = smart(src, 1.3, 9.6, tmp_path, media, control)
    streams = {s["codec_type"]: s for s in ffprobe_json(r.path, "-show_streams")["streams"]}
    # one audio stream copied in one piece: starts with the video (within one AAC frame) and lasts as long
    assert abs(float(streams["audio"]["start_time"]) - float(streams["video"]["start_time"])) <= 0.022
    assert abs(float(streams["audio"]["duration"]) - float(streams["video"]["duration"])) <= 0.05
    packets = ffprobe_json(r.path, "-select_streams", "a", "-show_entries", "packet=pts,duration")["packets"]
    gaps = [b["pts"] - a["pts"] - a["duration"] for a, b in zip(packets, packets[1:], strict=False)]
    assert set(gaps) == {0}, "audio packets are back to back, no seam at the joins"


def test_smart_cut_headers_match_the_source(sources, tmp_path: Path, media, control) -> None:
    """The joined stream has one SPS/PPS, the source's: strict decoders see one stream."""
    src = sources["gop2"]
    r = smart(src, 1.3, 9.6, tmp_path, media, control)
    extradata = [ffprobe_json(p, "-select_streams", "v", "-show_entries", "stream=extradata", "-show_data")
                 ["streams"][0]["extradata"] for p in (src.path, r.path)]
    assert extradata[0] == extradata[1]


@pytest.mark.parametrize(("source", "start", "end", "kw", "reason"), [
    ("vp9", 0.5, 3.5, {}, "vp9 video"),
    ("opengop", 1.2, 7.5, {}, "open GOP"),
    ("nosei", 1.2, 9.5, {}, "not encoded by x264"),
    ("rotated", 0.5, 3.9, {}, "rotated"),
    ("gop2", 1.2, 3.5, {}, "no complete GOP"),
    ("gop2", 1.9, 5.5, {}, "shorter than 2 GOPs"),
    ("gop2_mkv", 1.2, 9.5, {}, "matroska source"),
    ("gop2", 1.2, 9.5, {"height": 90}, "resize"),
])
def test_fallbacks_reencode_and_say_why(sources, source: str, start: float, end: float, kw: dict, reason: str,
                                        tmp_path: Path, media, control) -> None:
    src = sources[source]
    fmt = "mkv" if source == "vp9" else "mp4"
    r = smart(src, start, end, tmp_path, media, control, fmt=fmt, **kw)
    assert r.mode == "accurate"
    assert reason in r.note
    assert r.info.video.codec == "h264"
    assert abs(r.info.duration - (end - start)) <= 1 / 30 + 0.07


def test_smart_webm_falls_back(sources, tmp_path: Path, media, control) -> None:
    r = smart(sources["gop2"], 1.2, 9.5, tmp_path, media, control, fmt="webm")
    assert r.mode == "accurate" and "format webm" in r.note and r.info.video.codec == "vp9"


def test_smart_leaves_no_scratch_files(sources, tmp_path: Path, media, control) -> None:
    smart(sources["gop2"], 1.3, 9.6, tmp_path, media, control)
    smart(sources["gop2"], 1.2, 3.5, tmp_path, media, control)  # fallback path too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.mp4"]
