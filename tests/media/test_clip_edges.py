"""make_clip at the edges of the media, against real ffmpeg: frame exactness when `start`
falls between frames (checked by an oracle that decodes everything without seeking), and from
sources where an input-side seek lands after `start` (B-frames in an MP4 without an edit list,
Matroska, MPEG-TS, container start times), audio before a late video start, a video that ends before the audio, non-square pixels, portrait
GIFs, copy clips from long GOPs, and bounded threads.

The sources here are generated once per module (small, short) in addition to conftest's.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest
from mediacheck import (
    SLACK,
    Source,
    assert_same_frames_as_source,
    decode_errors,
    ffprobe_json,
    frame_clip_times,
    frame_count,
    gray_frames,
    psnr,
)

import clipper.jobs.clip as clip_module
from clipper.errors import PermanentError
from clipper.jobs.clip import make_clip
from clipper.jobs.probe import probe_media
from clipper.jobs.spec import ClipSpec


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, timeout=120)


def _video(seconds: float, rate: str = "30", size: str = "320x240") -> list[str]:
    return ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}"]


def _audio(seconds: float) -> list[str]:
    return ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"]


H264 = ("-c:v", "libx264", "-preset", "veryfast", "-sc_threshold", "0", "-bf", "2", "-pix_fmt", "yuv420p")
AAC = ("-c:a", "aac", "-b:a", "64k")
# passthrough: mp4's default constant-rate mode would fill a late video start with copies of
# its first frame
KEEP_TIMES = ("-fps_mode", "passthrough")

SOURCES = {
    # 25 fps, GOP 2 s, 16 s
    "fps25": lambda p: _ffmpeg(*_video(16, "25"), *_audio(16), "-map", "0:v", "-map", "1:a", *H264, "-g", "50",
                               *AAC, str(p)),
    # video from 1.0 s to 8.0 s, audio from 0 to 8.0 s
    "late_video": lambda p: _ffmpeg("-itsoffset", "1", *_video(7), *_audio(8), "-map", "0:v", "-map", "1:a", *H264,
                                    "-g", "60", *KEEP_TIMES, *AAC, str(p)),
    # video 6 s, audio 11 s
    "short_video": lambda p: _ffmpeg(*_video(6), *_audio(11), "-map", "0:v", "-map", "1:a", *H264, "-g", "60",
                                     *AAC, str(p)),
    # video 8 s, audio 4 s
    "short_audio": lambda p: _ffmpeg(*_video(8), *_audio(4), "-map", "0:v", "-map", "1:a", *H264, "-g", "60",
                                     *AAC, str(p)),
    # 720x480 shown as 16:9 (SAR 32:27), as on DVDs and DV
    "anamorphic": lambda p: _ffmpeg(*_video(3, size="720x480"), *_audio(3), "-map", "0:v", "-map", "1:a",
                                    "-vf", "setsar=32/27", *H264, "-g", "30", *AAC, str(p)),
    "portrait": lambda p: _ffmpeg(*_video(3, size="360x640"), *_audio(3), "-map", "0:v", "-map", "1:a", *H264,
                                  "-g", "30", *AAC, str(p)),
    # one keyframe every 25 s, longer than any fixed allowance
    "long_gop": lambda p: _ffmpeg(*_video(30, "10", "160x120"), *_audio(30), "-map", "0:v", "-map", "1:a", *H264,
                                  "-g", "250", "-keyint_min", "250", *AAC, str(p)),
    # B-frames (keyframes every 2 s), 8 s, where an input-side seek to `start` can land after it:
    # MP4 without an edit list (a keyframe's DTS is two frames before its PTS; video from 0.067)
    "no_editlist": lambda p: _ffmpeg(*_video(8), *_audio(8), "-map", "0:v", "-map", "1:a", *H264, "-g", "60", *AAC,
                                     "-movflags", "+faststart", "-use_editlist", "0", str(p)),
    # Matroska (ffmpeg aims 3/23 s early) with a container start time of 1.479 (video from 1.5)
    "offset_mkv": lambda p: _ffmpeg(*_video(8), *_audio(8), "-map", "0:v", "-map", "1:a", *H264, "-g", "60", *AAC,
                                    "-output_ts_offset", "1.5", str(p)),
    # MPEG-TS (found by bisection) with a container start time of 2.879 (video from 2.9)
    "offset_ts": lambda p: _ffmpeg(*_video(8), *_audio(8), "-map", "0:v", "-map", "1:a", *H264, "-g", "60", *AAC,
                                   "-output_ts_offset", "1.5", str(p)),
}
SOURCE_EXTENSIONS = {"offset_mkv": "mkv", "offset_ts": "ts"}


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Source]:
    d = tmp_path_factory.mktemp("edge-sources")
    paths = {name: d / f"{name}.{SOURCE_EXTENSIONS.get(name, 'mp4')}" for name in SOURCES}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for f in [pool.submit(make, paths[name]) for name, make in SOURCES.items()]:
            f.result()
    return {name: Source(name, path, probe_media(path)) for name, path in paths.items()}


def clip(src: Source, start: float, end: float, tmp_path: Path, media, control, mode: str = "accurate",
         fmt: str = "mp4", threads: int = 0, **kw):
    spec = ClipSpec("c", start, end, mode, fmt, mode_was_explicit=True, **kw)
    return make_clip(src.path, src.info, spec, tmp_path, media, threads=threads, control=control, timeout=120)


def stream(path: Path, kind: str) -> dict:
    data = ffprobe_json(path, "-show_streams")
    return next(s for s in data["streams"] if s["codec_type"] == kind)


def stream_length(s: dict) -> float:
    """A stream's duration (Matroska: its DURATION tag)."""
    if "duration" in s:
        return float(s["duration"])
    h, m, sec = (s.get("tags") or {})["DURATION"].split(":")
    return int(h) * 3600 + int(m) * 60 + float(sec)


# the oracle (mediacheck): whole decodes, no seeking; the same frame re-encoded scores ~40-50
# dB at 64x48, a neighbouring frame far less
MATCH_DB = 36.0


def assert_holds_source_frames(out: Path, src: Path, start: float, end: float) -> int:
    return assert_same_frames_as_source(out, src, start, end, min_db=MATCH_DB)


# -- 1. frame exactness when start falls between frames ----------------------------------------

@pytest.mark.parametrize(("source", "start", "end", "fmt", "frames"), [
    ("gop2", 4.02, 10, "mp4", 179),      # 30 fps: 4.0333 .. 9.9667
    ("ntsc", 2.02, 8, "mp4", 179),       # 29.97 fps
    ("gop2", 4.02, 10, "webm", 179),
    ("gop2_mkv", 4.02, 10, "mkv", 180),  # this Matroska copy's video starts at 0.021: 4.021 .. 9.988
])
def test_accurate_between_frames_is_frame_exact(sources, source, start, end, fmt, frames, tmp_path: Path, media,
                                                control) -> None:
    src = sources[source]
    r = clip(src, start, end, tmp_path, media, control, fmt=fmt)
    assert assert_holds_source_frames(r.path, src.path, start, end) == frames


def test_accurate_first_frame_keeps_its_time(sources, tmp_path: Path, media, control) -> None:
    # the frame at 4.0333 is shown at 0.0133 into the clip, as it is in the source
    r = clip(sources["gop2"], 4.02, 10, tmp_path, media, control)
    assert float(stream(r.path, "video")["start_time"]) == pytest.approx(121 / 30 - 4.02, abs=0.001)


def test_accurate_between_frames_at_25_fps(edge, tmp_path: Path, media, control) -> None:
    r = clip(edge["fps25"], 5.03, 15, tmp_path, media, control)
    assert assert_holds_source_frames(r.path, edge["fps25"].path, 5.03, 15) == 249  # 5.04 .. 14.96


AAC_FRAME = 1024 / 48000


def keyframe_times(path: Path) -> list[Fraction]:
    return frame_clip_times(path, keyframes_only=True)


# where `start` is, in frames from the keyframe (30 fps): between the two frames shown before it
# (the first is lost when the seek lands on the keyframe), on it, and on the frame before it
CUTS = {"between_frames": Fraction(-3, 2), "on_keyframe": Fraction(0), "frame_before_keyframe": Fraction(-1)}


@pytest.mark.parametrize("cut", list(CUTS))
@pytest.mark.parametrize("source", ["no_editlist", "offset_mkv", "offset_ts"])
def test_accurate_where_the_seek_lands_after_start_is_frame_exact(edge, source: str, cut: str, tmp_path: Path, media,
                                                                  control) -> None:
    src = edge[source]
    key = keyframe_times(src.path)[2]  # the third keyframe, about 4 s in
    start = float(key + CUTS[cut] / 30)
    end = start + 3
    r = clip(src, start, end, tmp_path, media, control)
    assert assert_holds_source_frames(r.path, src.path, start, end) == 90
    video, audio = stream(r.path, "video"), stream(r.path, "audio")
    # the first frame keeps its time (half a frame in when `start` is between frames); the
    # audio starts at `start`, so within an audio frame of the first picture, and lasts the clip
    first = 1 / 60 if cut == "between_frames" else 0.0
    assert float(video["start_time"]) == pytest.approx(first, abs=0.002)
    assert abs(float(audio["start_time"])) <= AAC_FRAME
    assert abs(float(audio["start_time"]) - float(video["start_time"])) <= AAC_FRAME
    assert stream_length(audio) == pytest.approx(3.0, abs=AAC_FRAME)


@pytest.mark.parametrize("fmt", ["mkv", "webm", "gif", "m4a", "mp3"])
def test_accurate_formats_from_a_source_without_edit_list(edge, fmt: str, tmp_path: Path, media, control) -> None:
    src = edge["no_editlist"]
    start = float(keyframe_times(src.path)[2] - Fraction(3, 2) / 30)  # between the frames shown before a keyframe
    end = start + 2
    r = clip(src, start, end, tmp_path, media, control, fmt=fmt)
    if fmt in ("mkv", "webm"):
        assert assert_holds_source_frames(r.path, src.path, start, end) == 60
    if fmt == "gif":  # 10 fps from the clip's first frame (the one shown before the keyframe too)
        assert frame_count(r.path) == 20 and r.info.duration == pytest.approx(2.0, abs=0.01)
        assert decode_errors(r.path) == ""
    if fmt in ("mkv", "m4a"):  # AAC, no priming shown; (Opus and MP3 start their own ways)
        audio = stream(r.path, "audio")
        assert abs(float(audio["start_time"])) <= AAC_FRAME
        assert stream_length(audio) == pytest.approx(2.0, abs=AAC_FRAME)
    if fmt == "mp3":
        assert r.info.duration == pytest.approx(2.0, abs=0.06)


def test_gif_between_frames_still_works(sources, tmp_path: Path, media, control) -> None:
    r = clip(sources["gop2"], 4.02, 6, tmp_path, media, control, fmt="gif")
    s = stream(r.path, "video")
    assert s["codec_name"] == "gif" and abs(float(r.info.duration) - 1.98) <= 0.1
    assert decode_errors(r.path) == ""


# -- 2. audio before a late video start ------------------------------------------------------

@pytest.mark.parametrize("mode", ["accurate", "copy"])
def test_audio_before_the_first_video_frame_is_kept(edge, mode: str, tmp_path: Path, media, control) -> None:
    src = edge["late_video"]
    r = clip(src, 0, 6, tmp_path, media, control, mode=mode)
    audio, video = stream(r.path, "audio"), stream(r.path, "video")
    assert float(audio["start_time"]) <= 0.03 and stream_length(audio) >= 5.95
    assert float(video["start_time"]) == pytest.approx(1.0, abs=0.03)


def test_start_before_the_first_video_frame_keeps_the_audio_from_start(edge, tmp_path: Path, media, control) -> None:
    src = edge["late_video"]
    r = clip(src, 0.5, 6, tmp_path, media, control)
    audio, video = stream(r.path, "audio"), stream(r.path, "video")
    assert float(audio["start_time"]) <= 0.03 and stream_length(audio) >= 5.45
    assert float(video["start_time"]) == pytest.approx(0.5, abs=0.03)
    assert assert_holds_source_frames(r.path, src.path, 0.5, 6) == 150
    r = clip(src, 0.5, 6, tmp_path, media, control, fmt="m4a")
    assert float(stream(r.path, "audio")["start_time"]) <= 0.03 and r.info.duration >= 5.45


def test_a_truncated_audio_stream_fails_verification(edge, tmp_path: Path, media, control,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The old command (input-side -ss 0) loses 0.9 s of audio; the container still lasts 6 s."""
    real = clip_module.build_encode_command

    def seek_anyway(src, source, spec, start, duration, m, out, **kw):
        cmd = real(src, source, spec, start, duration, m, out, **kw)
        i = cmd.index("-i")
        return [*cmd[:i], "-ss", "0", *cmd[i:]]

    monkeypatch.setattr(clip_module, "build_encode_command", seek_anyway)
    with pytest.raises(PermanentError, match=r"clip \(c\): bad output: audio stream lasts 5\.\d+ s vs 6\.000 s "
                                             r"expected ±[\d.]+ \(0\.[89]\d+ s short\)"):
        clip(edge["late_video"], 0, 6, tmp_path, media, control)


def test_audio_shorter_than_the_clip_is_no_failure(edge, tmp_path: Path, media, control) -> None:
    for mode in ("accurate", "copy"):
        r = clip(edge["short_audio"], 2, 7, tmp_path, media, control, mode=mode)
        assert stream_length(stream(r.path, "audio")) == pytest.approx(2.0, abs=0.1)
        assert r.info.duration == pytest.approx(5.0, abs=0.2)
        # the audio ends (at 4 s) before the clip starts: the clip is all picture
        r = clip(edge["short_audio"], 5, 7, tmp_path, media, control, mode=mode)
        assert r.info.duration == pytest.approx(2.0, abs=0.15) and r.info.video is not None


def test_clip_ending_before_the_video_starts_is_permanent(edge, tmp_path: Path, media, control) -> None:
    with pytest.raises(PermanentError, match=r"end 0.5 s is before the video starts \(1.000 s\)"):
        clip(edge["late_video"], 0, 0.5, tmp_path, media, control)


# -- 5. the video ends before the audio ------------------------------------------------------

def test_clip_of_a_video_format_ends_with_the_video(edge, tmp_path: Path, media, control) -> None:
    src = edge["short_video"]  # video 6 s, audio 11 s
    for mode in ("accurate", "copy"):
        r = clip(src, 3, 10, tmp_path, media, control, mode=mode)
        assert r.note == "end 10 s is past the end of the video; clamped to 6.000 s"
        assert r.info.duration == pytest.approx(3.0, abs=0.15)
        assert stream_length(stream(r.path, "audio")) == pytest.approx(3.0, abs=0.15)


@pytest.mark.parametrize("mode", ["accurate", "copy"])
def test_clip_starting_after_the_video_is_permanent(edge, mode: str, tmp_path: Path, media, control) -> None:
    src = edge["short_video"]
    with pytest.raises(PermanentError, match=r"clip \(c\): start 8 s is past the end of the video \(6.000 s\)"):
        clip(src, 8, 10, tmp_path, media, control, mode=mode)
    with pytest.raises(PermanentError, match=r"clip \(c\): start 5.99 s is after the last video frame \(at 5.967 s; "
                                             r"the video ends at 6.000 s\)"):
        clip(src, 5.99, 6.5, tmp_path, media, control, mode=mode)
    assert list(tmp_path.iterdir()) == []


def test_audio_format_may_go_past_the_video(edge, tmp_path: Path, media, control) -> None:
    r = clip(edge["short_video"], 8, 10, tmp_path, media, control, fmt="m4a")
    assert r.note is None and r.info.duration == pytest.approx(2.0, abs=0.1)


# -- 4. non-square pixels --------------------------------------------------------------------

@pytest.mark.parametrize(("fmt", "kw", "size"), [
    ("mp4", {}, (852, 480)),
    ("mp4", {"width": 320}, (320, 180)),
    ("webm", {"height": 240}, (426, 240)),
    ("gif", {}, (480, 270)),
])
def test_non_square_pixels_are_made_square(edge, fmt, kw, size, tmp_path: Path, media, control) -> None:
    r = clip(edge["anamorphic"], 0.5, 1.5, tmp_path, media, control, fmt=fmt, **kw)
    s = stream(r.path, "video")
    assert (s["width"], s["height"]) == size
    assert s.get("sample_aspect_ratio", "1:1") in ("1:1", "0:1")


def test_copy_keeps_the_sample_aspect_ratio(edge, tmp_path: Path, media, control) -> None:
    r = clip(edge["anamorphic"], 0, 2, tmp_path, media, control, mode="copy")
    s = stream(r.path, "video")
    assert (s["width"], s["height"], s["sample_aspect_ratio"]) == (720, 480, "32:27")


# -- 7. gif: the longer side is capped -------------------------------------------------------

def test_portrait_gif_height_is_capped(edge, tmp_path: Path, media, control) -> None:
    m = media.model_copy(update={"gif_max_width": 200})
    r = clip(edge["portrait"], 0.5, 1.5, tmp_path, m, control, fmt="gif")
    s = stream(r.path, "video")
    assert (s["width"], s["height"]) == (112, 200)


# -- 6. copy: the allowance is the lead-in from the keyframe, not a fixed 20 s -----------------

def test_copy_from_a_gop_longer_than_20_s(edge, tmp_path: Path, media, control) -> None:
    src = edge["long_gop"]  # keyframes at 0 and 25 s
    r = clip(src, 24.5, 26, tmp_path, media, control, mode="copy", fmt="mkv")
    assert r.info.duration == pytest.approx(26, abs=0.3)  # Matroska shows the 24.5 s lead-in
    r = clip(src, 24.5, 26, tmp_path, media, control, mode="copy", fmt="mp4")
    assert r.info.duration == pytest.approx(1.5, abs=0.3)  # the edit list hides it


def test_copy_from_matroska_allows_ffmpegs_earlier_seek(sources, tmp_path: Path, media, control) -> None:
    # with B-frames ffmpeg aims 3/23 s early in Matroska: 2.05 lands on the keyframe at 0, not 2
    r = clip(sources["gop2_mkv"], 2.05, 7.05, tmp_path, media, control, mode="copy", fmt="mkv")
    assert r.info.duration == pytest.approx(7.05, abs=0.3)


def test_copy_longer_than_its_lead_in_explains_is_rejected(sources, tmp_path: Path, media, control,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    real = clip_module.build_copy_command

    def three_seconds_too_long(src, source, fmt, start, duration, out):
        return real(src, source, fmt, start, duration + 3, out)

    monkeypatch.setattr(clip_module, "build_copy_command", three_seconds_too_long)
    # lead-in 1.7 s (keyframe at 2), so up to 5 + 1.7 + 0.5 s; three seconds more is caught
    with pytest.raises(PermanentError, match=r"bad output: duration 9\.\d+ s vs 5\.000 s expected -0\.5/\+2\.2"):
        clip(sources["gop2"], 3.7, 8.7, tmp_path, media, control, mode="copy", fmt="mkv")


# -- 3. bounded threads: ffmpeg takes the options --------------------------------------------

def test_one_thread_encode_with_filters(sources, tmp_path: Path, media, control) -> None:
    r = clip(sources["gop2"], 1, 3, tmp_path, media, control, fmt="mp4", threads=1, width=160)
    assert (r.info.video.width, r.info.video.height) == (160, 90)
    r = clip(sources["gop2"], 1, 3, tmp_path, media, control, fmt="gif", threads=1)
    assert r.info.video.codec == "gif"


# -- 6. thumbnails take the frame at `at` where a plain seek lands after it ---------------------

@pytest.mark.parametrize("cut", ["between_frames", "frame_before_keyframe"])
@pytest.mark.parametrize("source", ["no_editlist", "offset_mkv", "offset_ts"])
def test_thumbnail_where_the_seek_lands_after_at_is_the_frame_at_at(edge, source: str, cut: str, tmp_path: Path,
                                                                   control) -> None:
    from clipper.jobs.spec import ThumbSpec
    from clipper.jobs.thumbs import make_thumbnail

    src = edge[source]
    at = float(keyframe_times(src.path)[2] + CUTS[cut] / 30)
    thumb = ThumbSpec("t", at, None, None, "cover", "png", 90)
    result = make_thumbnail(src.path, src.info, thumb, tmp_path, control=control, timeout=60)
    times = frame_clip_times(src.path)
    expect = next(i for i, t in enumerate(times) if t >= Fraction(at) - Fraction(SLACK))
    [picture], source_frames = gray_frames(result.path), gray_frames(src.path)
    scores = {j: psnr(picture, source_frames[j]) for j in range(expect - 3, expect + 4)}
    assert max(scores, key=scores.__getitem__) == expect and scores[expect] >= MATCH_DB, scores
