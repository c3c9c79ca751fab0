"""Thumbnails are verified from their own header, without an ffprobe (clipper.media.imageinfo):
for every format clipper writes, the header gives what ffprobe gives; what it does not model
goes to ffprobe; a file cut short fails."""

from __future__ import annotations

import random
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest
from mediacheck import ffprobe_json

from clipper.errors import TransientError
from clipper.jobs.probe import MediaInfo, media_info_from_json
from clipper.jobs.spec import ThumbSpec
from clipper.jobs.thumbs import make_thumbnail
from clipper.media.imageinfo import read_image
from clipper.media.isobmff import Broken, Unsure
from clipper.media.verify import verify_image


def what_checks_read(info: MediaInfo) -> tuple:
    v = info.video
    return info.format_name, info.streams, v.codec, v.width, v.height, v.sar


def ffprobe_info(path: Path) -> MediaInfo:
    return media_info_from_json(ffprobe_json(path, "-show_format", "-show_streams"))


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp"])
@pytest.mark.parametrize("size", [(None, None), (160, 160)], ids=["source size", "cover"])
def test_the_header_reads_what_ffprobe_reads(sources, tmp_path: Path, control, fmt: str, size) -> None:
    src = sources["gop2"]
    made = make_thumbnail(src.path, src.info, ThumbSpec("t", 2.5, *size, "cover", fmt, 80), tmp_path,
                          control=control, timeout=60)
    assert what_checks_read(read_image(made.path)) == what_checks_read(ffprobe_info(made.path))


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp"])
def test_non_square_pixels_read_as_ffprobe_reads(sources, tmp_path: Path, fmt: str) -> None:
    # an image that keeps a 4:3 sample aspect ratio (clipper's own are square): JFIF and pHYs carry it
    image = tmp_path / f"wide.{fmt}"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(sources["gop2"].path), "-vf", "setsar=4/3",
                    "-frames:v", "1", str(image)], check=True)
    assert what_checks_read(read_image(image)) == what_checks_read(ffprobe_info(image))


def test_what_the_header_reader_does_not_model_goes_to_ffprobe(tmp_path: Path, control) -> None:
    image = tmp_path / "alpha.webp"  # an extended WebP (VP8X, with an alpha channel)
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "color=c=red@0.5:s=64x48,format=rgba",
                    "-frames:v", "1", "-c:v", "libwebp", str(image)], check=True)
    with pytest.raises(Unsure, match="VP8X"):
        read_image(image)
    info = verify_image(image, width=64, height=48, codec="webp", control=control)
    assert info.video.codec == "webp"


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp"])
def test_a_thumbnail_cut_short_fails(sources, tmp_path: Path, control, fmt: str) -> None:
    src = sources["gop2"]
    made = make_thumbnail(src.path, src.info, ThumbSpec("t", 2.5, None, None, "cover", fmt, 80), tmp_path,
                          control=control, timeout=60)
    data = made.path.read_bytes()
    made.path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(TransientError, match="thumbnail: the output is unreadable: .*truncated"):
        verify_image(made.path, width=320, height=180, codec={"jpg": "mjpeg"}.get(fmt, fmt), control=control)


def test_a_damaged_header_is_unsure_or_broken_never_an_exception(sources, tmp_path: Path, control) -> None:
    src = sources["gop2"]
    rng = random.Random(8)
    for fmt in ("jpg", "png", "webp"):
        made = make_thumbnail(src.path, src.info, ThumbSpec("t", 2.5, None, None, "cover", fmt, 80), tmp_path,
                              control=control, timeout=60)
        original = made.path.read_bytes()
        for _ in range(200):
            data = bytearray(original)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(min(len(data), 800))] = rng.randrange(256)
            made.path.write_bytes(bytes(data))
            try:
                read_image(made.path)
            except (Unsure, Broken):
                pass


def test_aspect_ratio_headers_count_where_ffprobe_reads_them(sources, tmp_path: Path) -> None:
    # ffmpeg's own images with a 4:3 aspect ratio, then the header that says so moved elsewhere
    src = str(sources["gop2"].path)
    png, jpg = tmp_path / "a.png", tmp_path / "a.jpg"
    for image in (png, jpg):
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", src, "-vf", "setsar=4/3", "-frames:v", "1",
                        str(image)], check=True)
    # PNG: a pHYs after the image data is ignored by pngdec
    data = png.read_bytes()
    at = data.index(b"pHYs") - 4
    phys = data[at:at + 21]
    data = data[:at] + data[at + 21:]
    end = data.index(b"IEND") - 4
    png.write_bytes(data[:end] + phys + data[end:])
    # JPEG: a JFIF APP0 after the frame header still counts for mjpegdec
    data = jpg.read_bytes()
    at = data.index(b"\xff\xe0")
    app0 = data[at:at + 2 + int.from_bytes(data[at + 2:at + 4], "big")]
    data = data[:at] + data[at + len(app0):]
    sof = data.index(b"\xff\xc0")
    sof_end = sof + 2 + int.from_bytes(data[sof + 2:sof + 4], "big")
    jpg.write_bytes(data[:sof_end] + app0 + data[sof_end:])
    for image in (png, jpg):
        assert what_checks_read(read_image(image)) == what_checks_read(ffprobe_info(image))
    assert read_image(png).video.sar == 1 and read_image(jpg).video.sar == Fraction(4, 3)
