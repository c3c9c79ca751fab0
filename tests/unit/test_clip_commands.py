"""The pure parts of the clip and thumbnail stages: exact ffmpeg argv, sizes, ranges."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from clipper.errors import PermanentError
from clipper.jobs.clip import build_copy_command, build_encode_command, copy_obstacle, output_size, resolve_range
from clipper.jobs.probe import AudioStream, MediaInfo, VideoStream
from clipper.jobs.spec import ClipSpec, ThumbSpec
from clipper.jobs.thumbs import build_thumbnail_command, jpeg_qscale, thumb_size
from clipper.media.command import SOURCE_FORMAT_WHITELIST, ffmpeg_argv, seconds_arg, seek_input
from clipper.media.geometry import display_size, scaled_size
from clipper.media.seek import plan_accurate_seek
from clipper.settings import MediaSettings

BASE = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", "-abort_on", "empty_output"]
SRC = Path("/w/src.mp4")
OUT = Path("/w/out/.a.part.mp4")


def video(codec: str = "h264", w: int = 1280, h: int = 720, index: int = 0, **kw) -> VideoStream:
    fields = dict(index=index, codec=codec, profile="High", level=31, pix_fmt="yuv420p", width=w, height=h,
                  fps=Fraction(30), time_base=Fraction(1, 15360), has_b_frames=2, field_order="progressive", frames=900)
    fields.update(kw)
    return VideoStream(**fields)


def media(v: VideoStream | None = None, a: str | None = "aac", duration: float = 30.0,
          fmt: str = "mov,mp4,m4a,3gp,3g2,mj2", audio_start: float | None = None,
          audio_duration: float | None = None, start_time: float = 0.0) -> MediaInfo:
    audio = AudioStream(index=1 if v else 0, codec=a, profile="LC", sample_rate=48000, channels=2,
                        start_time=audio_start, duration=audio_duration) if a else None
    return MediaInfo(fmt, duration, 1000, v, audio, int(v is not None), int(audio is not None), start_time)


def clip(fmt: str = "mp4", mode: str = "accurate", start: float = 5.5, end: float = 15.5, **kw) -> ClipSpec:
    return ClipSpec("a", start, end, mode, fmt, **kw)


def inputs(start: str | None, threads: int = 0) -> list[str]:
    return ["-format_whitelist", SOURCE_FORMAT_WHITELIST, "-protocol_whitelist", "file",
            *(["-ss", start] if start is not None else []), *(["-threads", str(threads)] if threads else []),
            "-i", str(SRC)]


def test_copy_mp4_exact_argv() -> None:
    cmd = build_copy_command(SRC, media(video()), "mp4", 5.5, 10.0, OUT)
    assert cmd == [*BASE, *inputs("5.5"), "-map", "0:0", "-map", "0:1",
                   "-f", "mp4", "-c", "copy", "-movflags", "+faststart", "-t", "10", str(OUT)]


def test_copy_mkv_has_no_faststart_and_m4a_drops_video() -> None:
    mkv = build_copy_command(SRC, media(video()), "mkv", 0, 2.25, OUT)
    # from 0: no -ss at all (an input-side seek can lose audio before the first video keyframe)
    assert mkv[len(BASE):] == [*inputs(None), "-map", "0:0", "-map", "0:1", "-f", "matroska", "-c", "copy",
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
    info = media(video())
    # as make_clip plans it: decode from the keyframe at 4.0 (input side, just past it, where
    # the demuxer lands on it), drop the frames up to start (output side; the two add up to 5.4995)
    seek = plan_accurate_seek(info, 5.4995, 4.0)
    cmd = build_encode_command(SRC, info, clip(), 5.4995, 10, m, OUT, threads=2, seek=seek)
    # -threads on the input bounds the decoder, on the output the encoder; no filter graph here
    assert cmd == [*BASE, *inputs("4.002", threads=2), "-map", "0:0", "-map", "0:1",
                   "-f", "mp4", "-b:a", "128k", "-c:a", "aac", "-c:v", "libx264", "-crf", "20",
                   "-enc_time_base:v", "-1", "-fps_mode", "passthrough",
                   "-movflags", "+faststart", "-pix_fmt", "yuv420p", "-preset", "veryfast", "-ss", "1.4975", "-t", "10",
                   "-threads", "2", str(OUT)]


def test_encode_without_a_planned_seek_seeks_to_start() -> None:
    cmd = build_encode_command(SRC, media(video()), clip(), 5.5, 10, MediaSettings(), OUT)
    assert cmd[:cmd.index("-i") + 2] == [*BASE, *inputs("5.5")] and cmd.count("-ss") == 1


def test_encode_with_resize_uses_a_filter_graph() -> None:
    cmd = build_encode_command(SRC, media(video()), clip(height=360), 0, 1, MediaSettings(), OUT)
    assert cmd[cmd.index("-filter_complex") + 1] == "[0:0]scale=640:360[s0];[s0]setsar=1[s1]"
    assert cmd[cmd.index("-map"):cmd.index("-map") + 4] == ["-map", "[s1]", "-map", "0:1"]
    assert "-threads" not in cmd and "-filter_complex_threads" not in cmd  # 0: ffmpeg's choice


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
        "[0:0]fps=12[s0];[s0]scale=480:270:flags=lanczos[s1];[s1]setsar=1[s2];[s2]split=2[s3][s4];"
        "[s3]palettegen=stats_mode=diff[s5];[s4][s5]paletteuse=bayer_scale=5:dither=bayer[s6]")
    assert cmd[cmd.index("-enc_time_base:v") + 1] == "-1"
    assert cmd.count("-map") == 1 and "-c:a" not in cmd and cmd[cmd.index("-f") + 1] == "gif"


def test_gif_is_trimmed_inside_its_graph() -> None:
    """So the palette and the frame rate see only the clip, and its times are clip times."""
    m = MediaSettings(gif_fps=12, gif_max_width=480)
    info = media(video())
    cmd = build_encode_command(SRC, info, clip("gif"), 5.4995, 3, m, OUT, seek=plan_accurate_seek(info, 5.4995, 4.0))
    assert cmd[:cmd.index("-i") + 2] == [*BASE, *inputs("4.002")]
    assert cmd[cmd.index("-filter_complex") + 1] == (
        "[0:0]trim=start=1.4975[s0];[s0]setpts=PTS-1.4975/TB[s1];[s1]fps=12[s2];[s2]scale=480:270:flags=lanczos[s3];"
        "[s3]setsar=1[s4];[s4]split=2[s5][s6];[s5]palettegen=stats_mode=diff[s7];"
        "[s6][s7]paletteuse=bayer_scale=5:dither=bayer[s8]")
    assert cmd.count("-ss") == 1 and cmd[cmd.index("-t") + 1] == "3"


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
    ((640, 360), {"cap_side": 480}, (480, 270)),           # gif cap
    ((320, 180), {"cap_side": 480, "upscale": True}, (320, 180)),  # a cap never enlarges
    ((1280, 720), {"width": 1000, "max_side": 640}, (640, 360)),
    ((4, 2), {"width": 1}, (2, 2)),                        # at least 2x2
    ((1080, 1920), {"cap_side": 480}, (270, 480)),         # gif: the longer side is capped...
    ((1920, 1080), {"cap_side": 480}, (480, 270)),
    ((320, 180), {"cap_side": 480}, (320, 180)),           # ...never enlarged
    ((1080, 1920), {"width": 540, "cap_side": 480}, (270, 480)),
])
def test_scaled_size(src: tuple[int, int], kw: dict, expected: tuple[int, int]) -> None:
    w, h = scaled_size(*src, **kw)
    assert (w, h) == expected and w % 2 == 0 and h % 2 == 0


def test_rotated_source_is_scaled_with_sides_swapped() -> None:
    m = MediaSettings()
    cmd = build_encode_command(SRC, media(video(w=1920, h=1080, rotation=90)), clip(max=640), 0, 1, m, OUT)
    assert cmd[cmd.index("-filter_complex") + 1] == "[0:0]scale=360:640[s0];[s0]setsar=1[s1]"


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
    assert cmd == [*BASE, *inputs("2.9995"),
                   "-filter_complex", "[0:0]scale=228:128:flags=lanczos[s0];[s0]setsar=1[s1];[s1]crop=128:128[s2]",
                   "-map", "[s2]", "-f", "image2", "-c:v", "mjpeg", "-frames:v", "1", "-q:v", "6", "-update", "1",
                   str(out)]


def test_thumbnail_last_frame_fallback_reads_a_window_before_at() -> None:
    t = ThumbSpec("p", 29.99, None, None, "cover", "webp", 80)
    cmd = build_thumbnail_command(SRC, media(video(w=640, h=360)), t, Path("/o.webp"), last_frame=True)
    assert cmd[cmd.index("-ss") + 1] == "27.9895" and cmd[cmd.index("-t") + 1] == "4"
    assert "-frames:v" not in cmd and cmd[cmd.index("-c:v") + 1] == "libwebp" and cmd[cmd.index("-quality") + 1] == "80"


# -- threads (workers.ffmpeg_threads bounds decoder, filter graph and encoder) ----------------

def test_seek_input_puts_threads_on_the_input() -> None:
    cmd = ffmpeg_argv(seek_input(SRC, 1.5, 2, threads=3), out=OUT)
    assert cmd == [*BASE, "-format_whitelist", SOURCE_FORMAT_WHITELIST, "-protocol_whitelist", "file",
                   "-ss", "1.5", "-t", "2", "-threads", "3", "-i", str(SRC), str(OUT)]
    assert "-threads" not in ffmpeg_argv(seek_input(SRC, 1.5), out=OUT)


def test_encode_with_filters_bounds_the_filter_graph_too() -> None:
    cmd = build_encode_command(SRC, media(video()), clip(height=360), 5, 1, MediaSettings(), OUT, threads=1)
    assert cmd[cmd.index("-i") - 2:cmd.index("-i")] == ["-threads", "1"]  # decoder
    # ffmpeg-python writes -filter_complex, which only -filter_complex_threads bounds
    assert cmd[cmd.index("-filter_complex_threads") + 1] == "1"
    assert cmd[cmd.index("-i"):].count("-threads") == 1 and cmd[-3:] == ["-threads", "1", str(OUT)]  # encoder


def test_audio_only_encode_has_no_filter_threads() -> None:
    cmd = build_encode_command(SRC, media(video()), clip("mp3"), 5, 1, MediaSettings(), OUT, threads=2)
    assert "-filter_complex_threads" not in cmd and cmd.count("-threads") == 2
    assert "-enc_time_base:v" not in cmd and "-fps_mode" not in cmd


def test_thumbnail_threads() -> None:
    t = ThumbSpec("p", 3.0, 128, 128, "cover", "jpg", 85)
    cmd = build_thumbnail_command(SRC, media(video(w=640, h=360)), t, Path("/o.jpg"), threads=2)
    assert cmd[cmd.index("-i") - 2:cmd.index("-i")] == ["-threads", "2"]
    after_input = cmd[cmd.index("-i"):]
    assert cmd[cmd.index("-filter_complex_threads") + 1] == "2"
    assert after_input[after_input.index("-threads") + 1] == "2"  # encoder
    unscaled = build_thumbnail_command(SRC, media(video(w=640, h=360)), ThumbSpec("p", 3.0, None, None, "cover", "png", 85),
                                       Path("/o.png"), threads=2)
    assert "-filter_complex" not in unscaled and "-filter_complex_threads" not in unscaled
    assert unscaled.count("-threads") == 2


# -- seeking: never lose the audio before the first video frame ------------------------------

def late_video(**kw) -> MediaInfo:
    """Video from 1.0 s to 8.0 s, audio from 0 to 8.0 s."""
    return media(video(start_time=1.0, duration=7.0, **kw), duration=8.0, audio_start=0.0, audio_duration=8.0)


def test_seek_from_zero_has_no_ss() -> None:
    cmd = build_encode_command(SRC, late_video(), clip(start=0, end=6), 0, 6, MediaSettings(), OUT)
    assert "-ss" not in cmd
    assert "-ss" not in build_copy_command(SRC, late_video(), "mp4", 0, 6, OUT)


def test_seek_before_the_first_video_frame_is_on_the_output_side() -> None:
    cmd = build_encode_command(SRC, late_video(), clip(start=0.5, end=6), 0.5, 5.5, MediaSettings(), OUT)
    assert cmd.index("-ss") > cmd.index("-i") and cmd[cmd.index("-ss") + 1] == "0.5"
    copy = build_copy_command(SRC, late_video(), "mp4", 0.5, 5.5, OUT)
    assert copy.index("-ss") > copy.index("-i") and copy[copy.index("-ss") + 1] == "0.5"


def test_seek_at_or_after_the_first_video_frame_is_on_the_input_side() -> None:
    for start in (1.0, 2.5):
        cmd = build_encode_command(SRC, late_video(), clip(start=start, end=6), start, 6 - start, MediaSettings(), OUT)
        assert cmd.index("-ss") < cmd.index("-i") and cmd.count("-ss") == 1


def test_accurate_seek_keeps_the_audio_before_the_first_video_frame() -> None:
    m, info = MediaSettings(), late_video()
    for start, key in ((0, 1.0), (0.5, None)):  # as plan_seek: no -ss from 0, output side before the video
        cmd = build_encode_command(SRC, info, clip(start=start, end=6), start, 6 - start, m, OUT,
                                   seek=plan_accurate_seek(info, start, key))
        assert cmd.count("-ss") == (0 if start == 0 else 1) and ("-ss" not in cmd or cmd.index("-ss") > cmd.index("-i"))
    cmd = build_encode_command(SRC, info, clip(start=3.5, end=6), 3.4995, 2.5, m, OUT,
                               seek=plan_accurate_seek(info, 3.4995, 3.0))
    i = cmd.index("-i")
    assert cmd[i - 2:i] == ["-ss", "3.002"] and cmd[cmd.index("-ss", i) + 1] == "0.4975"


# -- non-square pixels -----------------------------------------------------------------------

def ntsc_wide(**kw) -> VideoStream:
    return video(w=720, h=480, sar=Fraction(32, 27), **kw)  # DAR 16:9


def test_display_size_applies_the_sample_aspect_ratio() -> None:
    assert display_size(ntsc_wide()) == (853, 480)
    assert display_size(video(w=720, h=480, sar=Fraction(8, 9))) == (640, 480)
    assert display_size(ntsc_wide(rotation=90)) == (480, 853)


def test_non_square_source_is_scaled_to_square_pixels() -> None:
    m = MediaSettings()
    cmd = build_encode_command(SRC, media(ntsc_wide()), clip(width=320), 0, 1, m, OUT)
    assert cmd[cmd.index("-filter_complex") + 1] == "[0:0]scale=320:180[s0];[s0]setsar=1[s1]"
    # no resize asked: still scaled, to the displayed size
    cmd = build_encode_command(SRC, media(ntsc_wide()), clip(), 0, 1, m, OUT)
    assert cmd[cmd.index("-filter_complex") + 1] == "[0:0]scale=852:480[s0];[s0]setsar=1[s1]"
    assert output_size(clip("gif"), ntsc_wide(), m) == (480, 270)


def test_square_source_at_its_size_is_not_filtered() -> None:
    cmd = build_encode_command(SRC, media(video()), clip(), 0, 1, MediaSettings(), OUT)
    assert "-filter_complex" not in cmd


def test_non_square_thumbnail() -> None:
    t = ThumbSpec("p", 1.0, 200, None, "cover", "jpg", 85)
    cmd = build_thumbnail_command(SRC, media(ntsc_wide()), t, Path("/o.jpg"))
    assert cmd[cmd.index("-filter_complex") + 1] == "[0:0]scale=200:113:flags=lanczos[s0];[s0]setsar=1[s1]"
    full = build_thumbnail_command(SRC, media(ntsc_wide()), ThumbSpec("p", 1.0, None, None, "cover", "jpg", 85),
                                   Path("/o.jpg"))
    assert full[full.index("-filter_complex") + 1] == "[0:0]scale=853:480:flags=lanczos[s0];[s0]setsar=1[s1]"


# -- gif: the longer side is capped ----------------------------------------------------------

def test_portrait_gif_height_is_capped() -> None:
    m = MediaSettings(gif_max_width=480)
    assert output_size(clip("gif"), video(w=1080, h=1920), m) == (270, 480)
    assert output_size(clip("gif"), video(w=1920, h=1080), m) == (480, 270)
    assert output_size(clip("gif", height=1000), video(w=1080, h=1920), m) == (270, 480)
    assert output_size(clip("mp4"), video(w=1080, h=1920), m) == (1080, 1920)  # only gif
