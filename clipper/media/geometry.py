"""Output picture sizes (pure): keep the aspect ratio, even sides, never upscale unless asked.

Pictures: output sizes are computed on the displayed picture (rotation and the sample aspect
ratio applied, `display_size`), and every scaled picture gets `setsar=1`, so outputs have
square pixels (GIF players ignore the aspect ratio, and many thumbnail consumers do too). A
GIF's longer side is capped by `media.gif_max_width` (the name predates portrait sources: it
is the maximum side).
"""

from __future__ import annotations

import math
from fractions import Fraction

from clipper.jobs.probe import VideoStream


def _even(x: float, limit: int | None = None) -> int:
    """Nearest even integer >= 2, and not above `limit` (rounded down to even) when given."""
    n = max(2, 2 * math.floor(x / 2 + 0.5))
    if limit is not None:
        n = min(n, max(2, limit - limit % 2))
    return n


def scaled_size(src_w: int, src_h: int, *, width: int | None = None, height: int | None = None,
                max_side: int | None = None, upscale: bool = False,
                cap_side: int | None = None) -> tuple[int, int]:
    """Output size keeping the aspect ratio. Targets: `width` and/or `height` (both: fit
    inside the box), `max_side` (the longer side); the smallest scale they ask for wins.
    Caps that never enlarge: `cap_side` (the longer side; gif) and, unless
    `upscale`, the source size. Both sides even (4:2:0 chroma needs it) and never above any
    bound."""
    targets = [t for t in (width and width / src_w, height and height / src_h,
                           max_side and max_side / max(src_w, src_h)) if t]
    scale = min(targets) if targets else 1.0
    if cap_side:
        scale = min(scale, cap_side / max(src_w, src_h))
    if not upscale:
        scale = min(scale, 1.0)
    w_bounds = [b for b in (width, max_side, cap_side) if b] + ([] if upscale else [src_w])
    h_bounds = [b for b in (height, max_side, cap_side) if b] + ([] if upscale else [src_h])
    return (_even(src_w * scale, min(w_bounds) if w_bounds else None),
            _even(src_h * scale, min(h_bounds) if h_bounds else None))


def pixel_size(video: VideoStream) -> tuple[int, int]:
    """Width and height of the decoded frames as the filter graph gets them: ffmpeg rotates
    frames by the display matrix when it re-encodes, so a 90°/270° source has its sides swapped."""
    if video.rotation % 180 == 90:
        return video.height, video.width
    return video.width, video.height


def display_size(video: VideoStream) -> tuple[int, int]:
    """Width and height as displayed, in square pixels: the width stretched by the sample
    aspect ratio (720x480 at 32:27 shows as 853x480, 16:9), then the rotation applied."""
    width = max(1, round(video.width * Fraction(video.sar)))
    if video.rotation % 180 == 90:
        return video.height, width
    return width, video.height


def needs_scale(video: VideoStream, w: int, h: int) -> bool:
    """Whether frames must go through `scale` (+ `setsar=1`) to come out w x h, square pixels."""
    return (w, h) != pixel_size(video) or video.sar != 1
