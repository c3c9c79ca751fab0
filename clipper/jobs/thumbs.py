"""The thumbnail stage: one ThumbSpec -> one verified still image (jpg, webp or png).

Sizing (`thumb_size`, pure):
- `width` and `height` with fit `cover`: scaled to cover the box, then the centre cropped to
  exactly width x height;
- with fit `contain`: scaled to fit inside the box keeping the aspect ratio, *no padding*: the
  image is as large as the box allows and its real size is reported (letterboxing is the
  client's business, and a padded image would bake a background colour into it);
- only one of them: the other follows the aspect ratio; neither: the source's size.
A thumbnail is made at the size asked for, enlarging a smaller source if need be. Sizes are
computed on the displayed picture (sample aspect ratio and rotation applied, see
clip.display_size) and the image has square pixels (`setsar=1`): image viewers ignore the
aspect ratio, so a 720x480 16:9 source gives a 853x480 thumbnail, not a squeezed 720x480.

`at` at or past the end of the video (`MediaInfo.video_end`; the end of the media when the
probe does not know it), or a source without video, is a PermanentError: never a black frame,
even when the audio runs on. When `at` falls after the last video frame but before the end of
the video, the last frame, the one on screen at `at`, is used.

`threads` (`workers.ffmpeg_threads`) bounds the decoder, the filter graph and the encoder, as
for clips (see clip's module doc).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from clipper.errors import EmptyOutput, PermanentError
from clipper.jobs.probe import MediaInfo
from clipper.jobs.spec import ThumbSpec
from clipper.media.command import JobControl, ffmpeg_argv, output_thread_options, run_ffmpeg, seconds_arg, seek_input
from clipper.media.geometry import display_size, needs_scale
from clipper.media.seek import BOUNDARY_SLACK, Seek, accurate_seek
from clipper.media.verify import verify_image

EXTENSIONS = {"jpg": "jpg", "webp": "webp", "png": "png"}
CODECS = {"jpg": "mjpeg", "webp": "webp", "png": "png"}
LAST_FRAME_WINDOW = 2.0  # seconds before `at` searched for the last frame when none follows `at`


@dataclass(frozen=True)
class ThumbResult:
    path: Path
    width: int
    height: int
    format: str


@dataclass(frozen=True)
class ThumbGeometry:
    scale_w: int
    scale_h: int
    width: int  # final size (after the crop, for cover)
    height: int

    @property
    def cropped(self) -> bool:
        return (self.scale_w, self.scale_h) != (self.width, self.height)


def thumb_size(src_w: int, src_h: int, width: int | None, height: int | None, fit: str) -> ThumbGeometry:
    """Scale size and final size of a thumbnail (see module doc)."""
    if width and height:
        if fit == "cover":
            scale = max(width / src_w, height / src_h)
            sw, sh = max(width, round(src_w * scale)), max(height, round(src_h * scale))
            return ThumbGeometry(sw, sh, width, height)
        scale = min(width / src_w, height / src_h)
        sw, sh = min(width, max(1, round(src_w * scale))), min(height, max(1, round(src_h * scale)))
        return ThumbGeometry(sw, sh, sw, sh)
    if width:
        sh = max(1, round(src_h * width / src_w))
        return ThumbGeometry(width, sh, width, sh)
    if height:
        sw = max(1, round(src_w * height / src_h))
        return ThumbGeometry(sw, height, sw, height)
    return ThumbGeometry(src_w, src_h, src_w, src_h)


def jpeg_qscale(quality: int) -> int:
    """Quality 1..100 (100 best) -> mjpeg -q:v 31..2 (2 best)."""
    return round(31 - (min(max(quality, 1), 100) - 1) * 29 / 99)


def encoder_options(fmt: str, quality: int) -> dict[str, object]:
    if fmt == "jpg":
        return {"c:v": "mjpeg", "q:v": jpeg_qscale(quality)}
    if fmt == "webp":
        return {"c:v": "libwebp", "quality": quality}
    return {"c:v": "png"}


def thumb_geometry(source: MediaInfo, thumb: ThumbSpec) -> ThumbGeometry:
    """The thumbnail's size and crop, from the picture as displayed."""
    assert source.video is not None
    w, h = display_size(source.video)
    return thumb_size(w, h, thumb.width, thumb.height, thumb.fit)


def frame_time(thumb: ThumbSpec) -> float:
    """Where to decode to: the frame at `at` even if `at` was rounded (BOUNDARY_SLACK)."""
    return max(0.0, thumb.at - BOUNDARY_SLACK)


def build_thumbnail_command(src: Path, source: MediaInfo, thumb: ThumbSpec, out: Path, *,
                            last_frame: bool = False, threads: int = 0, seek: Seek | None = None) -> list[str]:
    """One frame at `thumb.at`, decoded exactly to it. `seek`: from `accurate_seek` (decode
    from the keyframe before `at`, skip on the output side; None: an input-side seek to `at`,
    exact where the demuxer lands at or before it). With `last_frame` the seek goes
    LAST_FRAME_WINDOW earlier and every frame overwrites the image (`-update 1`), leaving the
    last frame before the end of the video."""
    assert source.video is not None
    geo = thumb_geometry(source, thumb)
    at = frame_time(thumb)
    start = max(0.0, at - LAST_FRAME_WINDOW) if last_frame else at
    if last_frame or seek is None:
        seek = Seek(start, None)
    inp = seek_input(src, seek.input, threads=threads)
    video = inp[str(source.video.index)]
    scaled = needs_scale(source.video, geo.scale_w, geo.scale_h)
    filtered = scaled or geo.cropped
    if scaled:
        video = video.filter("scale", geo.scale_w, geo.scale_h, flags="lanczos").filter("setsar", 1)
    if geo.cropped:
        video = video.filter("crop", geo.width, geo.height)  # centred by default
    opts: dict[str, object] = {"format": "image2", "update": 1, **encoder_options(thumb.format, thumb.quality)}
    if seek.output is not None:
        opts["ss"] = seconds_arg(seek.output)
    if last_frame:
        opts["t"] = seconds_arg(at - start + LAST_FRAME_WINDOW)
    else:
        opts["frames:v"] = 1
    opts.update(output_thread_options(threads, filtered=filtered))
    return ffmpeg_argv(video, out=out, **opts)


def check_thumbnail(thumb: ThumbSpec, source: MediaInfo) -> None:
    """PermanentError when this media cannot give the thumbnail: no video, or `at` at/after the
    end of the video (not a black frame). Pure; the pipeline checks every output before any work."""
    label = f"thumbnail ({thumb.name})"
    if source.video is None:
        raise PermanentError(f"{label}: the source has no video")
    end, what = source.picture_end()
    if thumb.at >= end:
        raise PermanentError(f"{label}: at {thumb.at:g} s is past the end of the {what} ({end:.3f} s)")


def make_thumbnail(src: Path, source: MediaInfo, thumb: ThumbSpec, out_dir: Path, *,
                   control: JobControl, timeout: float, threads: int = 0) -> ThumbResult:
    """Produce `<out_dir>/<name>.<ext>`, verified with ffprobe. `threads`: the pipeline passes
    `workers.ffmpeg_threads` (0: ffmpeg's choice)."""
    check_thumbnail(thumb, source)
    label = f"thumbnail ({thumb.name})"
    ext = EXTENSIONS[thumb.format]
    final = out_dir / f"{thumb.name}.{ext}"
    tmp = out_dir / f".{thumb.name}.part.{ext}"
    geo = thumb_geometry(source, thumb)
    try:
        try:
            seek = accurate_seek(src, source, frame_time(thumb), control=control)
            run_ffmpeg(build_thumbnail_command(src, source, thumb, tmp, threads=threads, seek=seek), what=label,
                       timeout=timeout, control=control)
        except EmptyOutput:
            # no video frame at or after `at` (-abort_on empty_output): take the last one before it
            run_ffmpeg(build_thumbnail_command(src, source, thumb, tmp, last_frame=True, threads=threads), what=label,
                       timeout=timeout, control=control)
        verify_image(tmp, width=geo.width, height=geo.height, codec=CODECS[thumb.format], control=control, what=label)
        os.replace(tmp, final)
        return ThumbResult(final, geo.width, geo.height, thumb.format)
    finally:
        tmp.unlink(missing_ok=True)
