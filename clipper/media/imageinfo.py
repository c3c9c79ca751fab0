"""What a thumbnail we wrote is, read from its own header in Python, without an ffprobe (as
`mp4index` does for clips): the codec, the size and the sample aspect ratio, as ffprobe's
decoders read them, for the three formats clipper writes:

- PNG: `IHDR`'s width and height; the sample aspect ratio is `pHYs`'s x/y (pngdec reads it
  whatever its unit), square without one;
- JPEG: the first SOFn frame header's size; the aspect ratio is the JFIF APP0 density x/y
  (mjpegdec reads it whatever its unit; 0 on either side: square);
- WebP: a simple lossy (`VP8 `) or lossless (`VP8L`) file's frame size; square pixels (ffprobe
  says N/A). An extended file (`VP8X`: alpha, animation, metadata) is left to ffprobe.

Also checked, where ffprobe reads the header and says nothing: the file is whole (PNG ends
with `IEND`, JPEG with EOI, a WebP's RIFF size is the file's). `Unsure` (from mp4index): not one
of these, or a header this does not model: the caller asks ffprobe. `Broken`: cut short.
"""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

from clipper.jobs.probe import MediaInfo, VideoStream
from clipper.media.isobmff import Broken, Unsure

MAX_IMAGE = 256 * 1024 * 1024  # bytes: a thumbnail this big is not one we wrote (ask ffprobe)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# SOFn markers (C4 is DHT, C8 reserved, CC is DAC)
JPEG_FRAMES = {m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC)}


def _sar(num: int, den: int) -> Fraction:
    return Fraction(num, den) if num > 0 and den > 0 else Fraction(1)


def _png(data: bytes) -> tuple[str, int, int, Fraction]:
    pos, size, sar, image_data = 8, None, Fraction(1), False
    while pos + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack_from(">II", body)
        elif kind == b"IDAT":
            image_data = True
        elif kind == b"pHYs" and not image_data:  # pngdec ignores one after the image data
            sar = _sar(*struct.unpack_from(">ii", body))
        elif kind == b"IEND":
            if size is None:
                raise Unsure("a PNG without IHDR")
            if pos + 12 + length != len(data):
                raise Unsure("data after IEND")
            return "png", size[0], size[1], sar
        pos += 12 + length
    raise Broken("the PNG has no IEND chunk (a truncated file)")


def _jpeg(data: bytes) -> tuple[str, int, int, Fraction]:
    if data[-2:] != b"\xff\xd9":
        # ffmpeg's JPEGs end with EOI: without it the file was cut short (a truncated file)
        raise Broken("the JPEG does not end with EOI (a truncated file, or data after the image)")
    pos, sar, size = 2, Fraction(1), None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise Unsure(f"no JPEG marker at {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        body = data[pos + 4:pos + 2 + length]
        if marker == 0xE0 and body[:5] == b"JFIF\0":
            sar = _sar(*struct.unpack_from(">HH", body, 8))
        elif marker in JPEG_FRAMES and size is None:
            height, width = struct.unpack_from(">HH", body, 1)
            size = width, height
        elif marker in (0xD9, 0xDA):  # the scan: mjpegdec has read every header that counts (JFIF may follow SOF)
            break
        pos += 2 + length
    if size is None:
        raise Unsure("no JPEG frame header before the scan")
    return "mjpeg", size[0], size[1], sar


def _webp(data: bytes) -> tuple[str, int, int, Fraction]:
    (riff,) = struct.unpack_from("<I", data, 4)
    if riff + 8 != len(data):
        raise Broken(f"the WebP's RIFF header says {riff + 8} bytes, the file has {len(data)} (a truncated file)")
    kind = data[12:16]
    body = data[20:]
    if kind == b"VP8 " and body[3:6] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", body, 6)
        return "webp", width & 0x3FFF, height & 0x3FFF, Fraction(1)
    if kind == b"VP8L" and body[0] == 0x2F:
        (bits,) = struct.unpack_from("<I", body, 1)
        return "webp", (bits & 0x3FFF) + 1, (bits >> 14 & 0x3FFF) + 1, Fraction(1)
    raise Unsure(f"WebP chunk {kind!r}")


def read_image(path: Path) -> MediaInfo:
    """The MediaInfo ffprobe would give of a PNG, JPEG or WebP we wrote (module doc); Unsure
    for what this does not model, Broken for a file cut short."""
    with open(path, "rb") as f:
        head = f.read(16)
        if f.seek(0, 2) > MAX_IMAGE:
            raise Unsure("too large for a thumbnail")
        f.seek(0)
        data = f.read()
    if head.startswith(PNG_SIGNATURE):
        reader, demuxer = _png, "png_pipe"
    elif head.startswith(b"\xff\xd8"):
        reader, demuxer = _jpeg, "image2"  # what ffprobe picks for a .jpg
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        reader, demuxer = _webp, "webp_pipe"
    else:
        raise Unsure("not a PNG, JPEG or WebP")
    try:
        codec, width, height, sar = reader(data)
    except (struct.error, IndexError, ValueError) as exc:
        raise Unsure(f"unreadable header: {exc!r}") from None
    video = VideoStream(index=0, codec=codec, profile=None, level=None, pix_fmt=None, width=width, height=height,
                        fps=None, time_base=None, has_b_frames=0, field_order=None, frames=None, sar=sar)
    return MediaInfo(format_name=demuxer, duration=0.0, size=len(data), video=video, audio=None, video_streams=1,
                     audio_streams=0, streams=1)
