"""Several copy clips of one job cut by one ffmpeg (clipper.jobs.copies), against real ffmpeg:
each output is what a lone copy gives, and each is still verified: an output with a missing
stream or a wrong duration fails with the reason, and nothing is left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from mediacheck import decode_errors

from clipper.errors import PermanentError
from clipper.jobs import copies as copies_module
from clipper.jobs.clip import make_clip
from clipper.jobs.copies import batchable, build_copies_command, make_copy_clips
from clipper.jobs.spec import ClipSpec


def specs(*ranges: tuple[float, float], fmt: str = "mp4") -> list[ClipSpec]:
    return [ClipSpec(f"c{k}", s, e, "copy", fmt, mode_was_explicit=True) for k, (s, e) in enumerate(ranges)]


def test_one_ffmpeg_with_one_seeked_input_per_clip(sources, tmp_path: Path) -> None:
    src = sources["gop2"]
    cmd = build_copies_command(src.path, src.info, specs((1, 3), (5, 7), (8.5, 9.5)),
                               [tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "c.mp4"])
    assert cmd.count("ffmpeg") == 1 and cmd.count("-i") == 3
    assert [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "-ss"] == ["1", "5", "8.5"]


def test_each_output_is_what_a_lone_copy_gives(sources, tmp_path: Path, media, control) -> None:
    src = sources["gop2"]
    clips = specs((1, 3), (3.3, 8.3), (9, 11))
    made = make_copy_clips(src.path, src.info, clips, tmp_path, media, control=control, timeout=120)
    lone_dir = tmp_path / "lone"
    lone_dir.mkdir()
    for clip in clips:
        lone = make_clip(src.path, src.info, clip, lone_dir, media, threads=0, control=control, timeout=120)
        ours = made[clip.name]
        assert ours.path == tmp_path / f"{clip.name}.mp4" and ours.mode == "copy"
        assert ours.info.duration == pytest.approx(lone.info.duration, abs=0.01)
        assert ours.info.video.codec == "h264" and ours.info.audio.codec == "aac"
        assert decode_errors(ours.path) == ""
    assert not list(tmp_path.glob(".*"))  # no part file left


def test_only_plain_copies_are_batched(sources) -> None:
    src = sources["gop2"]
    copy, accurate = specs((1, 3))[0], ClipSpec("e", 1, 3, "accurate", "mp4", mode_was_explicit=True)
    clamped = specs((9, 20))[0]
    assert batchable(copy, src.info) and not batchable(accurate, src.info) and not batchable(clamped, src.info)


@pytest.mark.parametrize(("damage", "reason"), [
    ("drop_video", r"\(c1\): bad output: no video stream"),
    ("three_seconds_long", r"\(c1\): bad output: duration 5\.\d+ s vs 2\.000 s expected"),
])
def test_a_damaged_output_fails_with_its_reason(sources, tmp_path: Path, media, control, damage: str, reason: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # the cutting ffmpeg is real; only the second clip's output is asked for wrongly
    real = copies_module.copy_output

    def damaged(src, source, fmt, start, duration, out):
        if not out.name.startswith(".c1."):
            return real(src, source, fmt, start, duration, out)
        if damage == "drop_video":
            return real(src, source, "m4a", start, duration, out)
        return real(src, source, fmt, start, duration + 3, out)

    monkeypatch.setattr(copies_module, "copy_output", damaged)
    src = sources["gop2"]
    with pytest.raises(PermanentError, match=reason):
        make_copy_clips(src.path, src.info, specs((1, 3), (5, 7)), tmp_path, media, control=control, timeout=120)
    assert list(tmp_path.iterdir()) == []  # neither the bad output nor the good one is left
