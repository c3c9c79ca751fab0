"""make_thumbnail against real ffmpeg: formats, fit cover/contain, the frame at `at`, the end
of the video (also when the audio goes on), non-square pixels, threads, and the permanent
errors."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from mediacheck import Source, ffprobe_json

from clipper.errors import PermanentError
from clipper.jobs.probe import probe_media
from clipper.jobs.spec import ThumbSpec
from clipper.jobs.thumbs import make_thumbnail


def thumb(src, at, tmp_path, control, width=None, height=None, fit="cover", fmt="jpg", quality=85):
    spec = ThumbSpec("t", at, width, height, fit, fmt, quality)
    return make_thumbnail(src.path, src.info, spec, tmp_path, control=control, timeout=60)


def psnr_against(image: Path, src: Path, at: float) -> float:
    """PSNR of a still against the source frame at `at` (both as one frame at t=0)."""
    graph = ("[0:v]format=yuv444p,settb=AVTB,setpts=0[a];"
             "[1:v]trim=end_frame=1,format=yuv444p,settb=AVTB,setpts=0[b];[a][b]psnr")
    r = subprocess.run(["ffmpeg", "-nostdin", "-v", "info", "-i", str(image), "-ss", f"{at:.6f}", "-i", str(src),
                        "-lavfi", graph, "-frames:v", "1", "-f", "null", "-"], capture_output=True, timeout=60, check=True)
    return float(re.search(r"average:(\S+)", r.stderr.decode()).group(1).replace("inf", "1000"))


@pytest.mark.parametrize(("fmt", "codec"), [("jpg", "mjpeg"), ("webp", "webp"), ("png", "png")])
def test_formats(sources, fmt: str, codec: str, tmp_path: Path, control) -> None:
    r = thumb(sources["gop2"], 3, tmp_path, control, 128, 128, fmt=fmt)
    assert r.path == tmp_path / f"t.{fmt}" and (r.width, r.height, r.format) == (128, 128, fmt)
    s = ffprobe_json(r.path, "-show_streams")["streams"][0]
    assert (s["codec_name"], s["width"], s["height"]) == (codec, 128, 128)


@pytest.mark.parametrize(("box", "fit", "size"), [
    ((128, 128), "cover", (128, 128)),
    ((128, 128), "contain", (128, 72)),  # no padding: the real image size
    ((100, None), "cover", (100, 56)),
    ((None, 90), "contain", (160, 90)),
    ((None, None), "cover", (320, 180)),
    ((640, 480), "cover", (640, 480)),  # made at the size asked, enlarging
])
def test_fit(sources, box, fit, size, tmp_path: Path, control) -> None:
    r = thumb(sources["gop2"], 1, tmp_path, control, *box, fit=fit)
    s = ffprobe_json(r.path, "-show_streams")["streams"][0]
    assert (r.width, r.height) == size == (s["width"], s["height"])


def test_the_frame_at_at(sources, tmp_path: Path, control) -> None:
    src = sources["gop2"]
    at = 3 + 7 / 30  # between keyframes
    r = thumb(src, round(at, 4), tmp_path, control, fmt="png")
    # a PNG is RGB, so even the right frame scores ~32 dB against the YUV source; neighbours ~22
    assert psnr_against(r.path, src.path, at) > 30
    assert psnr_against(r.path, src.path, at + 1 / 30) < 26
    assert psnr_against(r.path, src.path, at - 1 / 30) < 26


def test_rotated_source(sources, tmp_path: Path, control) -> None:
    r = thumb(sources["rotated"], 1, tmp_path, control, width=90)
    assert (r.width, r.height) == (90, 160)


def test_quality_changes_jpeg_size(sources, tmp_path: Path, control) -> None:
    low = thumb(sources["gop2"], 1, tmp_path, control, fmt="jpg", quality=10).path.stat().st_size
    high = thumb(sources["gop2"], 1, tmp_path, control, fmt="jpg", quality=95).path.stat().st_size
    assert high > 2 * low


def test_after_the_last_frame_takes_the_last_frame(sources, tmp_path: Path, control) -> None:
    src = sources["gop2"]  # 360 frames; the last at 11.9667 s, media 12.0 s (audio to 12.0)
    r = thumb(src, 11.99, tmp_path, control, fmt="png")
    assert psnr_against(r.path, src.path, 11.96) > 30


def test_at_past_the_end_is_permanent(sources, tmp_path: Path, control) -> None:
    with pytest.raises(PermanentError, match=r"thumbnail \(t\): at 12 s is past the end of the video \(12.000 s\)"):
        thumb(sources["gop2"], 12, tmp_path, control)
    assert list(tmp_path.iterdir()) == []


def test_no_video_is_permanent(sources, tmp_path: Path, control) -> None:
    with pytest.raises(PermanentError, match="the source has no video"):
        thumb(sources["m4a"], 1, tmp_path, control)


# -- sources of their own: non-square pixels, a video shorter than its audio --------------------

@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Source]:
    d = tmp_path_factory.mktemp("thumb-sources")
    lavfi = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=11"]
    h264 = ["-c:v", "libx264", "-preset", "veryfast", "-g", "30", "-pix_fmt", "yuv420p", "-c:a", "aac"]
    made = {
        # 720x480 shown as 16:9 (SAR 32:27)
        "anamorphic": ["-f", "lavfi", "-i", "testsrc2=size=720x480:rate=30:duration=2", *lavfi, "-map", "0:v",
                       "-map", "1:a", "-vf", "setsar=32/27", "-t", "2", *h264],
        # video 6 s, audio 11 s
        "short_video": ["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=6", *lavfi, "-map", "0:v",
                        "-map", "1:a", *h264],
    }
    out = {}
    for name, args in made.items():
        path = d / f"{name}.mp4"
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args, str(path)], check=True, timeout=120)
        out[name] = Source(name, path, probe_media(path))
    return out


def sar(path: Path) -> str:
    return ffprobe_json(path, "-show_streams")["streams"][0].get("sample_aspect_ratio", "1:1")


@pytest.mark.parametrize(("box", "size"), [
    ((None, None), (853, 480)),  # 16:9, not the stored 720x480
    ((200, None), (200, 113)),
    ((None, 120), (213, 120)),
    ((128, 128), (128, 128)),    # cover crops the displayed picture
])
def test_non_square_pixels(odd, box, size, tmp_path: Path, control) -> None:
    r = thumb(odd["anamorphic"], 1, tmp_path, control, *box)
    s = ffprobe_json(r.path, "-show_streams")["streams"][0]
    assert (r.width, r.height) == size == (s["width"], s["height"])
    assert sar(r.path) in ("1:1", "0:1")


def test_non_square_thumbnail_is_the_displayed_picture(odd, tmp_path: Path, control) -> None:
    """The picture as a player shows it (stretched to 16:9), compared with ffmpeg's own
    rendering of the same frame."""
    r = thumb(odd["anamorphic"], 1, tmp_path, control, 853, 480, fmt="png")
    ref = tmp_path / "ref.png"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-ss", "1", "-i", str(odd["anamorphic"].path), "-vf",
                    "scale=853:480:flags=lanczos,setsar=1", "-frames:v", "1", str(ref)], check=True, timeout=60)
    graph = "[0:v]format=yuv444p[a];[1:v]format=yuv444p[b];[a][b]psnr"
    out = subprocess.run(["ffmpeg", "-nostdin", "-v", "info", "-i", str(r.path), "-i", str(ref), "-lavfi", graph,
                          "-f", "null", "-"], capture_output=True, timeout=60, check=True)
    assert float(re.search(r"average:(\S+)", out.stderr.decode()).group(1).replace("inf", "1000")) > 40


def test_at_past_the_end_of_the_video_is_permanent_although_audio_goes_on(odd, tmp_path: Path, control) -> None:
    with pytest.raises(PermanentError, match=r"thumbnail \(t\): at 9 s is past the end of the video \(6.000 s\)"):
        thumb(odd["short_video"], 9, tmp_path, control)
    assert list(tmp_path.iterdir()) == []


def test_after_the_last_frame_of_a_shorter_video_takes_the_last_frame(odd, tmp_path: Path, control) -> None:
    src = odd["short_video"]  # last frame at 5.9667, video ends at 6.0
    r = thumb(src, 5.99, tmp_path, control, fmt="png")
    assert psnr_against(r.path, src.path, 5.96) > 30


def test_with_one_thread(sources, tmp_path: Path, control) -> None:
    spec = ThumbSpec("t", 3, 128, 128, "cover", "jpg", 85)
    r = make_thumbnail(sources["gop2"].path, sources["gop2"].info, spec, tmp_path, control=control, timeout=60,
                       threads=1)
    assert (r.width, r.height) == (128, 128)
