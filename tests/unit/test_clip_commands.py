"""The pure parts of the clip and thumbnail stages: exact ffmpeg argv, sizes, ranges."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from clipper.errors import PermanentError
from clipper.jobs.clip import (
    build_copy_command,
    build_encode_command,
    copy_obstacle,
    resolve_range,
    scaled_size,
    seconds_arg,
)
from clipper.jobs.command import SOURCE_FORMAT_WHITELIST
from clipper.jobs.probe import AudioStream, MediaInfo, VideoStream
from clipper.jobs.spec import ClipSpec, ThumbSpec
from clipper.jobs.thumbs import build_thumbnail_command, jpeg_qscale, thumb_size
from clipper.settings import MediaSettings

BASE = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", "-abort_on", "empty_output"]
SRC = Path("/w/src.mp4")
OUT = Path("/w/out/.a.part.mp4")


def video(codec: str = "h264", w: int = 1280, h: int = 720, index: int = 0, **kw) -> VideoStream:
    fields = dict(index=index, codec=codec, profile="High", level=31, pix_fmt="yuv420p", width=w, height=h,
                  fps=Fraction(30), time_base=Fraction(1, 15360), has_b_frames=2, field_order="progressive", frames=900)
    fields.update(kw)
    return VideoStream(**fields)


def media(v: VideoStream | None = None, a: str | None = "aac", duration: float = 30.0) -> MediaInfo:
    audio = AudioStream(index=1 if v else 0, codec=a, profile="LC", sample_rate=48000, channels=2) if a else None
    return MediaInfo("mov,mp4,m4a,3gp,3g2,mj2", duration, 1000, v, audio, int(v is not None), int(audio is not None))


def clip(fmt: str = "mp4", mode: str = "accurate", start: float = 5.5, end: float = 15.5, **kw) -> ClipSpec:
    return ClipSpec("a", start, end, mode, fmt, **kw)


def inputs(start: str) -> list[str]:
    return ["-format_whitelist", SOURCE_FORMAT_WHITELIST, "-protocol_whitelist", "file", "-ss", start, "-i", str(SRC)]


def test_copy_mp4_exact_argv() -> None:
    cmd = build_copy_command(SRC, media(video()), "mp4", 5.5, 10.0, OUT)
    assert cmd == [*BASE, *inputs("5.5"), "-map", "0:0", "-map", "0:1",
                   "-f", "mp4", "-c", "copy", "-movflags", "+faststart", "-t", "10", str(OUT)]


def test_copy_mkv_has_no_faststart_and_m4a_drops_video() -> None:
    mkv = build_copy_command(SRC, media(video()), "mkv", 0, 2.25, OUT)
    assert mkv[len(BASE):] == [*inputs("0"), "-map", "0:0", "-map", "0:1", "-f", "matroska", "-c", "copy",
                               "-t", "2.25", str(OUT)]
    m4a = build_copy_command(SRC, media(video()), "m4a", 1, 2, OUT)
    assert m4a[len(BASE):] == [*inputs("1"), "-map", "0:1", "-f", "ipod", "-c", "copy", "-movflags", "+faststart",
                               "-t", "2", str(OUT)]


def test_copy_maps_by_index_so_cover_art_is_not_picked() -> None:
    info = media(video(index=2))
    cmd = build_copy_command(SRC, info, "mp4", 0, 1, OUT)
    assert cmd[cmd.index("-map"):cmd.index("-map") + 4] == ["-map", "0:2", "-map", "0:1"]


def test_copy_without_audio_maps_only_video() -> None:
    cmd = build_copy_command(SRC, media(video(), a=None), "mp4", 0, 1, OUT)
    assert cmd.count("-map") == 1 and "0:0" in cmd


def test_hevc_copy_into_mp4_gets_the_apple_tag() -> None:
    cmd = build_copy_command(SRC, media(video("hevc")), "mp4", 0, 1, OUT)
    assert cmd[cmd.index("-tag:v") + 1] == "hvc1"


def test_seconds_arg_has_no_float_noise() -> None:
    assert seconds_arg(5.1 + 0.2) == "5.3"
    assert seconds_arg(0) == "0"
    assert seconds_arg(1 / 3) == "0.333333"
    assert seconds_arg(3600.0) == "3600"


def test_encode_mp4_exact_argv() -> None:
    m = MediaSettings()
    cmd = build_encode_command(SRC, media(video()), clip(), 5.5, 10, m, OUT, threads=2)
    assert cmd == [*BASE, *inputs("5.5"), "-map", "0:0", "-map", "0:1",
                   "-f", "mp4", "-b:a", "128k", "-c:a", "aac", "-c:v", "libx264", "-crf", "20", "-fps_mode", "passthrough",
                   "-movflags", "+faststart", "-pix_fmt", "yuv420p", "-preset", "veryfast", "-t", "10",
                   "-threads", "2", str(OUT)]


def test_encode_with_resize_uses_a_filter_graph() -> None:
    cmd = build_encode_command(SRC, media(video()), clip(height=360), 0, 1, MediaSettings(), OUT)
    assert cmd[cmd.index("-filter_complex") + 1] == "[0:0]scale=640:360[s0]"
    assert cmd[cmd.index("-map"):cmd.index("-map") + 4] == ["-map", "[s0]", "-map", "0:1"]
    assert "-threads" not in cmd  # 0: ffmpeg's choice


def test_encode_webm_vp9_opus_realtime() -> None:
    cmd = build_encode_command(SRC, media(video()), clip("webm"), 0, 1, MediaSettings(), OUT)
    args = dict(zip(cmd, cmd[1:], strict=False))
    assert args["-c:v"] == "libvpx-vp9" and args["-c:a"] == "libopus" and args["-deadline"] == "realtime"
    assert args["-b:v"] == "0" and args["-crf"] == "32" and args["-row-mt"] == "1" and args["-f"] == "webm"
    assert "-movflags" not in cmd


def test_encode_gif_palette_in_one_graph_capped_width_no_audio() -> None:
    m = MediaSettings(gif_fps=12, gif_max_width=480)
    cmd = build_encode_command(SRC, media(video()), clip("gif"), 0, 3, m, OUT)
    assert cmd[cmd.index("-filter_complex") + 1] == (
        "[0:0]fps=12[s0];[s0]scale=480:270:flags=lanczos[s1];[s1]split=2[s2][s3];"
        "[s2]palettegen=stats_mode=diff[s4];[s3][s4]paletteuse=bayer_scale=5:dither=bayer[s5]")
    assert cmd.count("-map") == 1 and "-c:a" not in cmd and cmd[cmd.index("-f") + 1] == "gif"


@pytest.mark.parametrize(("fmt", "codec", "muxer"), [("m4a", "aac", "ipod"), ("mp3", "libmp3lame", "mp3")])
def test_encode_audio_only_formats(fmt: str, codec: str, muxer: str) -> None:
    cmd = build_encode_command(SRC, media(video()), clip(fmt), 1, 2, MediaSettings(), OUT)
    assert cmd.count("-map") == 1 and cmd[cmd.index("-map") + 1] == "0:1"
    assert cmd[cmd.index("-c:a") + 1] == codec and cmd[cmd.index("-f") + 1] == muxer and "-c:v" not in cmd


@pytest.mark.parametrize(("src", "kw", "expected"), [
    ((1280, 720), {}, (1280, 720)),
    ((321, 181), {}, (320, 180)),                          # odd source: even, never larger
    ((1280, 720), {"width": 640}, (640, 360)),
    ((1280, 720), {"height": 361}, (642, 360)),            # odd request rounds down to even
    ((1280, 720), {"width": 101}, (100, 56)),
    ((1280, 720), {"width": 256, "height": 256}, (256, 144)),  # both: fit inside the box
    ((720, 1280), {"width": 256, "height": 256}, (144, 256)),
    ((1920, 1080), {"max_side": 640}, (640, 360)),
    ((1080, 1920), {"max_side": 640}, (360, 640)),
    ((1280, 720), {"width": 1920}, (1280, 720)),           # never upscale...
    ((1280, 720), {"width": 1920, "upscale": True}, (1920, 1080)),  # ...unless asked
    ((640, 360), {"max_width": 480}, (480, 270)),          # gif cap
    ((320, 180), {"max_width": 480, "upscale": True}, (320, 180)),  # a cap never enlarges
    ((1280, 720), {"width": 1000, "max_side": 640}, (640, 360)),
    ((4, 2), {"width": 1}, (2, 2)),                        # at least 2x2
])
def test_scaled_size(src: tuple[int, int], kw: dict, expected: tuple[int, int]) -> None:
    w, h = scaled_size(*src, **kw)
    assert (w, h) == expected and w % 2 == 0 and h % 2 == 0


def test_rotated_source_is_scaled_with_sides_swapped() -> None:
    m = MediaSettings()
    cmd = build_encode_command(SRC, media(video(w=1920, h=1080, rotation=90)), clip(max=640), 0, 1, m, OUT)
    assert cmd[cmd.index("-filter_complex") + 1] == "[0:0]scale=360:640[s0]"


def test_range_clamps_the_end_and_refuses_a_start_past_the_end() -> None:
    info = media(video(), duration=30.0)
    assert resolve_range(clip(start=5, end=15), info).note is None
    r = resolve_range(clip(start=25, end=40), info)
    assert (r.start, r.end) == (25, 30.0) and "clamped to 30.000 s" in r.note
    with pytest.raises(PermanentError, match=r"clip \(a\): start 100 s is past the end of the media \(30.000 s\)"):
        resolve_range(clip(start=100, end=110), info)
    with pytest.raises(PermanentError, match="past the end"):
        resolve_range(clip(start=30, end=31), info)


def test_copy_obstacles() -> None:
    assert copy_obstacle(clip("mp4", "copy"), media(video())) is None
    assert copy_obstacle(clip("m4a", "copy"), media(video(), a="aac")) is None
    assert "AAC" in copy_obstacle(clip("m4a", "copy"), media(video(), a="mp3"))
    assert "vp8" in copy_obstacle(clip("mp4", "copy"), media(video("vp8")))
    assert copy_obstacle(clip("mkv", "copy"), media(video("vp8"), a="vorbis")) is None
    assert "resize" in copy_obstacle(clip("mp4", "copy", width=100), media(video()))
    assert "re-encoding" in copy_obstacle(clip("webm", "copy"), media(video()))


# -- thumbnails ------------------------------------------------------------------------------

@pytest.mark.parametrize(("src", "box", "fit", "scale", "final"), [
    ((640, 360), (128, 128), "cover", (228, 128), (128, 128)),
    ((360, 640), (128, 128), "cover", (128, 228), (128, 128)),
    ((640, 360), (128, 128), "contain", (128, 72), (128, 72)),
    ((640, 360), (128, None), "cover", (128, 72), (128, 72)),
    ((640, 360), (None, 90), "contain", (160, 90), (160, 90)),
    ((640, 360), (None, None), "cover", (640, 360), (640, 360)),
    ((320, 180), (640, 640), "cover", (1138, 640), (640, 640)),  # thumbnails are made at the size asked
])
def test_thumb_size(src, box, fit, scale, final) -> None:
    g = thumb_size(*src, *box, fit)
    assert (g.scale_w, g.scale_h) == scale and (g.width, g.height) == final


def test_jpeg_quality_mapping() -> None:
    assert jpeg_qscale(100) == 2 and jpeg_qscale(1) == 31 and 5 <= jpeg_qscale(85) <= 7


def test_thumbnail_cover_argv() -> None:
    t = ThumbSpec("poster", 3.0, 128, 128, "cover", "jpg", 85)
    out = Path("/w/out/.poster.part.jpg")
    cmd = build_thumbnail_command(SRC, media(video(w=640, h=360)), t, out)
    assert cmd == [*BASE, *inputs("2.9995"), "-filter_complex", "[0:0]scale=228:128:flags=lanczos[s0];[s0]crop=128:128[s1]",
                   "-map", "[s1]", "-f", "image2", "-c:v", "mjpeg", "-frames:v", "1", "-q:v", "6", "-update", "1",
                   str(out)]


def test_thumbnail_last_frame_fallback_reads_a_window_before_at() -> None:
    t = ThumbSpec("p", 29.99, None, None, "cover", "webp", 80)
    cmd = build_thumbnail_command(SRC, media(video(w=640, h=360)), t, Path("/o.webp"), last_frame=True)
    assert cmd[cmd.index("-ss") + 1] == "27.9895" and cmd[cmd.index("-t") + 1] == "4"
    assert "-frames:v" not in cmd and cmd[cmd.index("-c:v") + 1] == "libwebp" and cmd[cmd.index("-quality") + 1] == "80"
