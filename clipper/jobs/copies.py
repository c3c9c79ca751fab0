"""Several copy-mode clips of one job cut by one ffmpeg process.

A stream copy of a short clip costs little more than ffmpeg's start-up (~70 ms loading its
libraries, MEDIA-NOTES.md), so a job with N copy clips ran N start-ups for N small reads.
Here they are one ffmpeg with N outputs, each fed by its own input-side-seeked input of the
same source (`clip.copy_output`): ffmpeg's inputs are independent demuxers, so each output is
exactly what `build_copy_command` alone writes (keyframe-aligned, edit list, faststart).
Every output is then verified as a lone copy is (`clip.verify_clip`: one ffprobe each) and
gets its real name only once verified. A failure of the ffmpeg fails the job as a lone
clip's would: nothing is kept.

Only clips that are plain copies take part (`batchable`): those that fall back to a re-encode,
or ask for one, go through `make_clip` as before.
"""

from __future__ import annotations

from pathlib import Path

import ffmpeg

from clipper.jobs.clip import (
    EXTENSIONS,
    ClipResult,
    check_streams,
    clip_label,
    copy_obstacle,
    copy_output,
    finish,
    resolve_range,
    verify_clip,
)
from clipper.jobs.probe import MediaInfo
from clipper.jobs.spec import ClipSpec
from clipper.media.command import JobControl, ffmpeg_base, run_ffmpeg
from clipper.settings import MediaSettings


def batchable(clip: ClipSpec, source: MediaInfo) -> bool:
    """A copy clip that stays a copy, with nothing to note (an end clamped to the media's is
    left to `make_clip`, which says so)."""
    return (clip.mode == "copy" and copy_obstacle(clip, source) is None
            and resolve_range(clip, source).note is None)


def build_copies_command(src: Path | str, source: MediaInfo, clips: list[ClipSpec], outs: list[Path]) -> list[str]:
    """One ffmpeg writing each clip to its path in `outs` (pure)."""
    nodes = []
    for clip, out in zip(clips, outs, strict=True):
        rng = resolve_range(clip, source)
        nodes.append(copy_output(src, source, clip.format, rng.start, rng.duration, out))
    return [*ffmpeg_base(), *ffmpeg.merge_outputs(*nodes).get_args()]


def make_copy_clips(src: Path | str, source: MediaInfo, clips: list[ClipSpec], out_dir: Path, media: MediaSettings,
                    *, control: JobControl, timeout: float) -> dict[str, ClipResult]:
    """`<out_dir>/<name>.<ext>` for each clip (all `batchable`), verified; by clip name."""
    for clip in clips:
        check_streams(clip, source)
    # written under names no clip can have, renamed once verified (as make_clip does)
    tmps = [out_dir / f".{clip.name}.part.{EXTENSIONS[clip.format]}" for clip in clips]
    try:
        what = f"{len(clips)} copy clips ({', '.join(clip_label(c) for c in clips)})"
        run_ffmpeg(build_copies_command(src, source, clips, tmps), what=what, timeout=timeout, control=control)
        made: dict[str, ClipResult] = {}
        for clip, tmp in zip(clips, tmps, strict=True):
            info = verify_clip(tmp, src, source, clip, resolve_range(clip, source), "copy", media, control)
            made[clip.name] = ClipResult(tmp, info, "copy", None)
        for clip, tmp in zip(clips, tmps, strict=True):
            final = finish(tmp, out_dir / f"{clip.name}.{EXTENSIONS[clip.format]}")
            made[clip.name] = ClipResult(final, made[clip.name].info, "copy", None)
        return made
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
