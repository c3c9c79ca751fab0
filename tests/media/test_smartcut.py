"""Smart cut against real ffmpeg: frame-exact (count, content, clean decode) across GOP
sizes, B-frames on/off, NTSC rates, Matroska sources and outputs, and cut points on and
between keyframes; sources whose timestamps do not start at 0; joins next to keyframes that
must stay one valid H.264 stream (uniform DTS, idr_pic_id); and the fallbacks to a full
re-encode, each with its reason.

The newer tests check content with the oracle of mediacheck (whole decodes, no seeking), not
with ffmpeg's `-ss`, which shares the mistakes a smart cut can make about start times and
keyframe seeks."""

from __future__ import annotations

import concurrent.futures
import subprocess
from pathlib import Path

import pytest
from mediacheck import (
    Source,
    assert_audio_copied_in_sync,
    assert_frame_exact,
    assert_idr_ids_alternate,
    assert_same_frames_as_source,
    assert_uniform_dts,
    decode_errors,
    expected_source_frames,
    ffprobe_json,
    frame_clip_times,
)

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
    # keyframes at 2, 4, 6: the one-frame head runs on to 4, the one-frame tail starts at 4
    ("gop2", 2 - 1 / 30, 6 + 1 / 30, {}, "no GOP left to copy"),
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


# -- joins next to a keyframe ------------------------------------------------------------------

def assert_valid_smart_clip(r, src: Path, start: float, end: float) -> None:
    """Smart, clean decode, the right frames (oracle), one decode delay, legal IDR sequence."""
    assert r.mode == "smart", r.note
    assert decode_errors(r.path) == ""
    assert_same_frames_as_source(r.path, src, start, end)
    assert_uniform_dts(r.path)
    assert_idr_ids_alternate(r.path)


@pytest.mark.parametrize("source", ["gop2", "gop2_nob"])  # 2 B-frames, none
@pytest.mark.parametrize(("head", "tail"), [(-1, 1), (-2, 2), (1, -1), (2, -2)])
def test_cuts_next_to_keyframes_give_one_valid_stream(sources, source: str, head: int, tail: int, tmp_path: Path,
                                                      media, control) -> None:
    """Start `head` frames from the keyframe at 4 s, end `tail` frames from the one at 10 s.
    A re-encoded end of 1-2 frames used to have no B-frame delay (DTS squashed into 1-tick
    steps at the join) and a one-frame head was an IDR followed by the middle's IDR, both
    with idr_pic_id 0."""
    src = sources[source]
    start, end = 4 + head / 30, 10 + tail / 30
    assert_valid_smart_clip(smart(src, start, end, tmp_path, media, control), src.path, start, end)


# -- sources whose timestamps do not start at 0 ----------------------------------------------

CHIRP_SECONDS = 12


def _ffmpeg(*args: object) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *map(str, args)], check=True, timeout=120)


def _encode(out: Path, *extra: object, audio: bool = True) -> None:
    """testsrc2 (every frame distinct) and a chirp (every audio packet distinct), GOP 2 s, 2 B-frames."""
    inputs = ["-f", "lavfi", "-i", f"testsrc2=size=320x240:rate=30:duration={CHIRP_SECONDS}"]
    if audio:
        inputs += ["-f", "lavfi", "-i", f"aevalsrc=sin(2*PI*(300+40*t)*t):s=48000:d={CHIRP_SECONDS}",
                   "-c:a", "aac", "-b:a", "64k"]
    _ffmpeg(*inputs, "-c:v", "libx264", "-preset", "veryfast", "-g", 60, "-sc_threshold", 0, "-bf", 2,
            "-pix_fmt", "yuv420p", *extra, out)


@pytest.fixture(scope="module")
def offset_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Source]:
    """shifted: written with -output_ts_offset 1.5 (start_time 1.476: the audio's priming
    starts first); ts_copyts: an MPEG-TS remuxed to MP4 with -copyts (start_time ~1.4);
    noedit: B-frames without an edit list (audio from 0, video from 2 frames later, keyframe
    DTS 2 frames before its PTS); noedit_video: the same without audio (start_time 2 frames)."""
    from clipper.jobs.probe import probe_media

    d = tmp_path_factory.mktemp("smart-offsets")
    paths = {name: d / f"{name}.mp4" for name in ("shifted", "ts_copyts", "noedit", "noedit_video")}
    jobs = [lambda: _encode(paths["shifted"], "-output_ts_offset", 1.5),
            lambda: _encode(d / "source.ts", "-f", "mpegts"),
            lambda: _encode(paths["noedit"], "-use_editlist", 0),
            lambda: _encode(paths["noedit_video"], "-use_editlist", 0, audio=False)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for f in [pool.submit(job) for job in jobs]:
            f.result()
    _ffmpeg("-copyts", "-i", d / "source.ts", "-c", "copy", paths["ts_copyts"])
    return {name: Source(name, path, probe_media(path), 2.0) for name, path in paths.items()}


def test_offset_sources_are_what_the_tests_need(offset_sources) -> None:
    starts = {name: round(src.info.start_time, 3) for name, src in offset_sources.items()}
    assert starts["shifted"] > 1.4 and starts["ts_copyts"] > 1.0 and starts["noedit"] == 0
    assert starts["noedit_video"] == pytest.approx(2 / 30, abs=0.001)


@pytest.mark.parametrize(("source", "start", "end"), [
    ("shifted", 4.0, 10.0),  # the reviewer's case
    ("shifted", 0.0, 6.1),  # from the beginning: the video starts 24 ms after clip time 0
    ("ts_copyts", 4.02, 10.0),
    ("noedit", 4.02, 10.0),  # 4.02 is 1 frame before the keyframe at 4.0667 (DTS 4.0)
    ("noedit", 3.96, 9.97),
    ("noedit_video", 3.99, 9.0),
])
def test_sources_with_a_start_time_or_no_edit_list(offset_sources, source: str, start: float, end: float,
                                                    tmp_path: Path, media, control) -> None:
    """Clip times are relative to the container's start time (like -ss and players); the plan
    and the copied middle used packet times, so head and tail came from ~start_time later
    (frames out of order, non-monotonic DTS). Without an edit list, a seek to a frame just
    before a keyframe landed on that keyframe and lost the frames before it."""
    src = offset_sources[source]
    r = smart(src, start, end, tmp_path, media, control)
    assert_valid_smart_clip(r, src.path, start, end)
    assert abs(r.info.duration - (end - start)) <= 1 / 30 + 0.03
    if src.info.audio is not None:
        # the clip starts with its first video frame ("shifted": frames are 24 ms off the clip clock)
        times = frame_clip_times(src.path)
        first_frame = times[expected_source_frames(times, start, end).start]
        assert_audio_copied_in_sync(r.path, src.path, float(first_frame), end)
