"""Outputs are verified from their MP4 index, without an ffprobe (clipper.media.mp4index): for
every kind of MP4/M4A output clipper writes, the index gives what ffprobe gives for the fields
the checks and the result use; what it does not model goes to ffprobe; a file cut short fails."""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from mediacheck import ffprobe_json

from clipper.errors import TransientError
from clipper.jobs.clip import make_clip
from clipper.jobs.copies import make_copy_clips
from clipper.jobs.probe import MediaInfo, media_info_from_json
from clipper.jobs.spec import ClipSpec
from clipper.media.isobmff import Broken, Unsure
from clipper.media.mp4index import read_index
from clipper.media.verify import probe_output, read_output_info


def what_checks_read(info: MediaInfo) -> tuple:
    v, a = info.video, info.audio
    return (info.format_name, info.duration, info.start_time, info.video_streams, info.audio_streams, info.streams,
            v and (v.index, v.codec, v.width, v.height, v.sar, v.start_time, v.duration),
            a and (a.index, a.codec, a.start_time, a.duration))


def ffprobe_info(path: Path) -> MediaInfo:
    return media_info_from_json(ffprobe_json(path, "-show_format", "-show_streams"))


CASES = {
    # copy clips: keyframe lead-in (an edit list), audio priming, B-frames, NTSC time base
    "copy": ("gop2", ClipSpec("c", 1.3, 3.3, "copy", "mp4", mode_was_explicit=True)),
    "copy on a keyframe": ("gop1", ClipSpec("c", 2.0, 5.0, "copy", "mp4", mode_was_explicit=True)),
    "copy ntsc": ("ntsc", ClipSpec("c", 0.7, 4.1, "copy", "mp4", mode_was_explicit=True)),
    "copy without audio": ("noaudio", ClipSpec("c", 1.1, 3.0, "copy", "mp4", mode_was_explicit=True)),
    "copy to the end": ("gop05", ClipSpec("c", 9.2, 12.0, "copy", "mp4", mode_was_explicit=True)),
    "audio only from video": ("gop2", ClipSpec("c", 2.5, 4.0, "copy", "m4a", mode_was_explicit=True)),
    "audio only from m4a": ("m4a", ClipSpec("c", 0.5, 3.5, "accurate", "m4a")),
    "accurate": ("gop2", ClipSpec("c", 1.37, 3.9, "accurate", "mp4")),
    "accurate resized": ("gop1", ClipSpec("c", 3.0, 4.5, "accurate", "mp4", width=160)),
    "smart": ("gop2", ClipSpec("c", 1.5, 5.2, "smart", "mp4")),
    "vp9 re-encoded to mp4": ("vp9", ClipSpec("c", 0.4, 2.4, "accurate", "mp4")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_index_reads_what_ffprobe_reads(sources, tmp_path: Path, media, control, case: str) -> None:
    source, clip = CASES[case]
    src = sources[source]
    made = make_clip(src.path, src.info, clip, tmp_path, media, threads=0, control=control, timeout=120)
    assert what_checks_read(read_index(made.path, need_sar=True)) == what_checks_read(ffprobe_info(made.path))
    assert what_checks_read(made.info) == what_checks_read(ffprobe_info(made.path))  # what verification used


def test_batched_copies_read_as_ffprobe_reads(sources, tmp_path: Path, media, control) -> None:
    src = sources["gop2"]
    clips = [ClipSpec(f"c{k}", s, s + 2, "copy", "mp4", mode_was_explicit=True) for k, s in enumerate((0.3, 4.4, 8.1))]
    for made in make_copy_clips(src.path, src.info, clips, tmp_path, media, control=control, timeout=120).values():
        assert what_checks_read(made.info) == what_checks_read(ffprobe_info(made.path))


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", *args], check=True)


def test_streams_that_start_late_read_as_ffprobe_reads(sources, tmp_path: Path) -> None:
    # audio a second late: an empty edit before the real one
    src = str(sources["gop2"].path)
    late = tmp_path / "late.mp4"
    ffmpeg("-i", src, "-itsoffset", "1", "-i", src, "-map", "0:v", "-map", "1:a", "-c", "copy", "-t", "4", str(late))
    info = read_index(late)
    assert info.audio.start_time == pytest.approx(1, abs=0.05) and what_checks_read(info) == what_checks_read(ffprobe_info(late))
    # every stream late: the container starts with the earliest
    offset = tmp_path / "offset.mp4"
    ffmpeg("-i", src, "-t", "3", "-c", "copy", "-output_ts_offset", "1", str(offset))
    info = read_index(offset)
    assert info.start_time > 0.9 and what_checks_read(info) == what_checks_read(ffprobe_info(offset))


def test_what_the_index_does_not_model_goes_to_ffprobe(sources, tmp_path: Path, control) -> None:
    src = str(sources["gop2"].path)
    frag = tmp_path / "frag.mp4"  # a fragmented MP4: the samples are listed in moof boxes
    ffmpeg("-i", src, "-t", "3", "-c", "copy", "-movflags", "+frag_keyframe+empty_moov", str(frag))
    with pytest.raises(Unsure, match="fragmented"):
        read_index(frag)
    noedit = tmp_path / "noedit.mp4"  # B-frames without an edit list: the first frame is shown late
    ffmpeg("-i", src, "-t", "3", "-c", "copy", "-use_editlist", "0", str(noedit))
    with pytest.raises(Unsure, match="composition offsets"):
        read_index(noedit)
    cover = tmp_path / "cover.m4a"  # cover art: ffprobe counts it as a stream
    ffmpeg("-i", src, "-ss", "1", "-i", src, "-map", "0:a", "-map", "1:v", "-frames:v:0", "1", "-c:a", "copy",
           "-c:v", "png", "-disposition:v", "attached_pic", "-t", "2", str(cover))
    with pytest.raises(Unsure, match="cover art"):
        read_index(cover)
    assert read_output_info(cover, control=control, what="clip")[0].streams == 2
    info, reason = read_output_info(frag, control=control, what="clip")
    assert reason == "" and info.duration == pytest.approx(3, abs=0.2)
    # not an MP4 at all (Matroska) goes to ffprobe too
    info, _ = read_output_info(sources["gop2_mkv"].path, control=control, what="clip")
    assert info.format_name == "matroska,webm"


def test_an_output_cut_short_after_its_index_fails(sources, tmp_path: Path, control) -> None:
    # a faststart MP4 (moov first) cut short: ffprobe reads the header and finds nothing wrong
    whole = tmp_path / "whole.mp4"
    shutil.copy(sources["gop1"].path, whole)
    cut = tmp_path / "cut.mp4"
    for lost in (whole.stat().st_size // 2, 1):  # half of it, or only its last byte
        cut.write_bytes(whole.read_bytes()[:-lost])
        assert ffprobe_info(cut).duration > 0
        with pytest.raises(TransientError, match=r"clip: the output is unreadable: .*past the end of the file"):
            probe_output(cut, control=control, what="clip")


def test_a_damaged_index_is_unsure_or_broken_never_an_exception(sources, tmp_path: Path) -> None:
    # the reader runs in the daemon: whatever the bytes, it answers or passes the file to ffprobe
    original = sources["gop2"].path.read_bytes()
    moov = original.find(b"moov") - 4  # faststart: the index is near the start
    rng = random.Random(8)
    damaged = tmp_path / "damaged.mp4"
    for _ in range(300):
        data = bytearray(original[: moov + 40_000])
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(moov, moov + 40_000)] = rng.randrange(256)
        damaged.write_bytes(bytes(data))
        try:
            read_index(damaged, need_sar=True)
        except (Unsure, Broken):
            pass


def test_boxes_nested_without_end_are_unsure(tmp_path: Path) -> None:
    def box(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I4s", 8 + len(body), kind) + body

    nested = b""
    for _ in range(3000):
        nested = box(b"edts", nested)
    deep = tmp_path / "deep.mp4"
    deep.write_bytes(box(b"ftyp", b"isom\0\0\2\0") + box(b"moov", box(b"trak", nested)))
    with pytest.raises(Unsure, match="nested too deep"):
        read_index(deep)
