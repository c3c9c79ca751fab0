"""Smart-cut planning and header parsing (pure): packets + range -> head/middle/tail pieces,
the seeks and commands that make them."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from clipper.jobs.probe import AudioStream, MediaInfo, VideoStream
from clipper.jobs.smartcut import PieceSeek, build_join_command, build_pieces_command, concat_list, piece_seek
from clipper.media.h264 import (
    Mp4Track,
    b_frame_depth,
    bytes_from_hexdump,
    level_name,
    parse_avcc,
    read_mp4_track,
    x264_options_from_sei,
    x264_params,
)
from clipper.media.smartplan import IndexPacket, SmartCutFallback, SmartPlan, index_from_csv, microseconds, plan_smart_cut

TB = Fraction(1, 15360)
FRAME = 512  # ticks of one frame at 30 fps


def stream(seconds: float, gop_frames: int = 60, bframes: int = 2) -> list[IndexPacket]:
    """Packets in decode order like x264's closed GOPs: I P B B P B B ... (B after their P)."""
    n = round(seconds * 30)
    shown = list(range(n))
    decode: list[int] = []
    for g in range(0, n, gop_frames):
        gop = shown[g:g + gop_frames]
        decode.append(gop[0])
        rest = gop[1:]
        while rest:
            group = rest[:bframes + 1]
            rest = rest[bframes + 1:]
            decode += [group[-1], *group[:-1]]  # the reference first, then the B-frames it anchors
    return [IndexPacket(f * FRAME, None, FRAME, f % gop_frames == 0, 1000 + f) for f in decode]


def frames(plan: SmartPlan) -> list[tuple[str, float, int, float]]:
    return [(p.kind, float(p.first_pts * TB), p.frames, float(p.duration)) for p in plan.pieces]


def test_cut_between_keyframes_has_head_middle_tail() -> None:
    plan = plan_smart_cut(stream(12), TB, 1.5, 9.1)
    assert frames(plan) == [("encode", 1.5, 15, 0.5), ("copy", 2.0, 180, 6.0), ("encode", 8.0, 33, 1.1)]
    assert plan.frames == 228 == round((9.1 - 1.5) * 30)
    assert float(plan.start) == 1.5 and float(plan.duration) == pytest.approx(7.6)


def test_cut_on_keyframes_is_all_copy() -> None:
    plan = plan_smart_cut(stream(12), TB, 2, 8)
    assert frames(plan) == [("copy", 2.0, 180, 6.0)]


def test_start_on_a_keyframe_end_between() -> None:
    plan = plan_smart_cut(stream(12), TB, 2, 6.5)
    assert frames(plan) == [("copy", 2.0, 120, 4.0), ("encode", 6.0, 15, 0.5)]


def test_start_between_end_on_a_keyframe() -> None:
    plan = plan_smart_cut(stream(12), TB, 0.9, 6)
    assert frames(plan) == [("encode", 0.9, 33, 1.1), ("copy", 2.0, 120, 4.0)]


def test_start_between_frames_takes_the_next_frame() -> None:
    plan = plan_smart_cut(stream(12), TB, 1.51, 9)
    assert float(plan.pieces[0].first_pts * TB) == pytest.approx(1.5 + 1 / 30)


def test_times_within_half_a_millisecond_of_a_frame_are_at_it() -> None:
    plan = plan_smart_cut(stream(12), TB, round(7 / 30, 4), round(247 / 30, 4))  # 0.2333 and 8.2333
    assert plan.pieces[0].first_pts == 7 * FRAME
    assert plan.frames == 240  # frames 7..246; the one at 8.2333 is the end, excluded


def test_clip_to_the_last_frame() -> None:
    plan = plan_smart_cut(stream(12), TB, 3.3, 12)
    assert frames(plan)[-1] == ("encode", 10.0, 60, 2.0)
    assert plan.frames == 261


def test_copy_piece_remembers_its_keyframe_size() -> None:
    plan = plan_smart_cut(stream(12), TB, 1.5, 9.1)
    assert plan.pieces[1].first_size == 1000 + 60


def test_no_b_frames_and_short_gops() -> None:
    plan = plan_smart_cut(stream(12, gop_frames=15, bframes=0), TB, 1.1, 3.3)
    assert frames(plan) == [("encode", pytest.approx(1.1), 12, pytest.approx(0.4)), ("copy", 1.5, 45, 1.5),
                            ("encode", 3.0, 9, pytest.approx(0.3))]


@pytest.mark.parametrize(("start", "end", "reason"), [
    (2.1, 3.9, "no complete GOP"),
    (1.9, 5.5, "shorter than 2 GOPs"),
])
def test_short_clips_fall_back(start: float, end: float, reason: str) -> None:
    with pytest.raises(SmartCutFallback, match=reason):
        plan_smart_cut(stream(12), TB, start, end)


def test_open_gop_falls_back() -> None:
    packets = stream(12)
    # the last frame before the keyframe at 2 s is decoded after it (a leading picture)
    leading = next(p for p in packets if p.pts == 59 * FRAME)
    packets.remove(leading)
    packets.insert(next(i for i, p in enumerate(packets) if p.pts == 60 * FRAME) + 1, leading)
    with pytest.raises(SmartCutFallback, match="open GOP"):
        plan_smart_cut(packets, TB, 1.5, 9.1)


def test_variable_frame_rate_falls_back_but_coarse_time_bases_do_not() -> None:
    packets = stream(12)
    packets[5] = IndexPacket(packets[5].pts + 100, None, FRAME, False)
    with pytest.raises(SmartCutFallback, match="variable frame rate"):
        plan_smart_cut(packets, TB, 1.5, 9.1)
    ms = [IndexPacket(round(p.pts * TB * 1000), None, 33, p.keyframe) for p in stream(12)]  # 33, 33, 34 ms steps
    assert plan_smart_cut(ms, Fraction(1, 1000), 1.5, 9.1).frames == 228


# -- boundaries moved for a valid stream (B-frame delay, idr_pic_id) --------------------------

F = 1 / 30


@pytest.mark.parametrize("before", [1, 2, 3])
def test_a_head_shorter_than_the_b_frame_depth_plus_2_runs_on_to_the_next_keyframe(before: int) -> None:
    """1-3 frames before the keyframe at 2 s with 2 B-frames (at least 4 frames needed)."""
    plan = plan_smart_cut(stream(12), TB, 2 - before * F, 9.1, min_encoded_frames=4)
    assert frames(plan) == [("encode", pytest.approx(2 - before * F), 60 + before, pytest.approx(2 + before * F)),
                            ("copy", 4.0, 120, 4.0), ("encode", 8.0, 33, pytest.approx(1.1))]
    assert plan.pieces[0].decode_from == 0  # decoded from its own GOP's keyframe, not the next


def test_a_head_of_enough_frames_stays() -> None:
    plan = plan_smart_cut(stream(12), TB, 2 - 4 * F, 9.1, min_encoded_frames=4)
    assert frames(plan)[:2] == [("encode", pytest.approx(2 - 4 * F), 4, pytest.approx(4 * F)), ("copy", 2.0, 180, 6.0)]


@pytest.mark.parametrize("after", [1, 2])
def test_a_short_tail_starts_one_keyframe_earlier(after: int) -> None:
    plan = plan_smart_cut(stream(12), TB, 1.5, 8 + after * F, min_encoded_frames=4)
    assert frames(plan)[1:] == [("copy", 2.0, 120, 4.0), ("encode", 6.0, 60 + after, pytest.approx(2 + after * F))]
    assert plan.pieces[-1].decode_from == plan.pieces[-1].first_pts


def test_without_b_frames_only_one_frame_ends_are_merged() -> None:
    """min 2 frames: a one-frame head is an IDR alone, and the copied middle starts with another."""
    packets = stream(12, bframes=0)
    assert frames(plan_smart_cut(packets, TB, 2 - F, 9.1, min_encoded_frames=2))[0][2] == 61
    assert frames(plan_smart_cut(packets, TB, 2 - 2 * F, 9.1, min_encoded_frames=2))[0][2] == 2
    assert frames(plan_smart_cut(packets, TB, 1.5, 8 + F, min_encoded_frames=2))[-1][1:3] == (6.0, 61)


def test_merging_that_leaves_nothing_to_copy_falls_back() -> None:
    # keyframes at 2, 4, 6: the head runs to 4, the tail starts at 4
    with pytest.raises(SmartCutFallback, match="no GOP left to copy once the re-encoded ends hold at least 4 frames"):
        plan_smart_cut(stream(12), TB, 2 - F, 6 + F, min_encoded_frames=4)


def test_a_one_frame_gop_before_the_tail_goes_to_the_tail() -> None:
    """Its IDR would be followed by the tail's IDR, whose idr_pic_id (0) it may share."""
    packets = [IndexPacket(p.pts, None, FRAME, p.keyframe or p.pts == 239 * FRAME, 1000) for p in stream(12, bframes=0)]
    plan = plan_smart_cut(packets, TB, 1.5, 9.1, min_encoded_frames=2)
    assert frames(plan)[1:] == [("copy", 2.0, 179, pytest.approx(179 * F)),
                                ("encode", pytest.approx(239 * F), 34, pytest.approx(34 * F))]


def test_closely_spaced_keyframes_before_a_head_fall_back() -> None:
    """The head seeks half a frame past its GOP's keyframe; with the next keyframe closer than
    the B-frame depth, a demuxer seeking by DTS could land on that one."""
    packets = [IndexPacket(p.pts, None, FRAME, p.keyframe or p.pts == 63 * FRAME, 1000) for p in stream(12, bframes=0)]
    with pytest.raises(SmartCutFallback, match="keyframes only 3 frames apart"):
        plan_smart_cut(packets, TB, 61 * F, 9.1, min_encoded_frames=4)


# -- clip time vs packet time ------------------------------------------------------------------

def shifted(packets: list[IndexPacket], seconds: Fraction) -> list[IndexPacket]:
    ticks = int(seconds / TB)
    return [IndexPacket(p.pts + ticks, None, p.duration, p.keyframe, p.size) for p in packets]


def test_clip_times_are_relative_to_the_container_start() -> None:
    """A source whose packets start at 1.5 s (start_time 1.5): clip time 1.5 is packet time 3.0."""
    origin = Fraction(3, 2)
    plan = plan_smart_cut(shifted(stream(12), origin), TB, 1.5, 9.1, origin=origin, min_encoded_frames=4)
    assert frames(plan) == [("encode", 3.0, 15, 0.5), ("copy", 3.5, 180, 6.0), ("encode", 9.5, 33, pytest.approx(1.1))]
    assert plan.pieces[0].decode_from * TB == Fraction(3, 2)
    assert plan.start == Fraction(3, 2) and plan.clip_time(plan.first_pts) == Fraction(3, 2)
    assert [piece_seek(plan, p).input for p in plan.pieces] == ["0.016666", "2.000000", "8.000000"]
    join = build_join_command(Path("/w/src.mp4"), source(), plan, Path("/w/s/l"), "mp4", Path("/w/o.mp4"))
    assert join[join.index("/w/src.mp4") - 5:join.index("/w/src.mp4")] == ["-ss", "1.500000", "-t", "8.1", "-i"]


def test_a_start_time_that_is_not_a_whole_tick() -> None:
    """Audio first (start_time 1.476009), video at 1.5: clip 4.0 is packet 5.476009, so the
    first frame is the one at packet time 5.5 (clip 4.023991)."""
    origin = microseconds(1.476009)
    plan = plan_smart_cut(shifted(stream(12), Fraction(3, 2)), TB, 4.0, 10.0, origin=origin, min_encoded_frames=4)
    assert plan.first_pts * TB == Fraction(11, 2)
    assert plan.start == Fraction(11, 2) - Fraction(1476009, 10**6)
    assert plan.frames == 180


def test_the_index_must_reach_back_to_the_clip_start() -> None:
    """An index read from a keyframe shown after `start` misses the frames shown before it."""
    late = [p for p in stream(12) if p.pts >= 60 * FRAME]  # decode order from the keyframe at 2 s
    with pytest.raises(SmartCutFallback, match="does not reach back"):
        plan_smart_cut(late, TB, 2 - F, 9.1)
    assert plan_smart_cut(late, TB, 2.5, 9.1).frames == 198  # within its GOP is fine
    assert plan_smart_cut(late, TB, 1.5, 9.1, index_from_file_start=True).pieces[0].first_pts == 60 * FRAME


def test_head_seeks() -> None:
    """A head is decoded from its GOP's keyframe and trimmed on the output side; one that
    starts right after the keyframe needs no output-side trim; pieces on keyframes seek to them."""
    plan = plan_smart_cut(stream(12), TB, 2 - F, 9.1, min_encoded_frames=4)
    assert piece_seek(plan, plan.pieces[0]) == PieceSeek("0.016666", pytest.approx(4.5 - 0.016666), "1.933334")
    plan = plan_smart_cut(stream(12), TB, F, 9.1, min_encoded_frames=4)
    assert piece_seek(plan, plan.pieces[0]) == PieceSeek("0.016666", pytest.approx(2.5 - 0.016666), None)
    assert piece_seek(plan, plan.pieces[1]) == PieceSeek("2.000000", 6.5)
    assert piece_seek(plan, plan.pieces[2]) == PieceSeek("8.000000", pytest.approx(1.6))


def test_index_from_csv_keeps_decode_order_and_sizes() -> None:
    text = "61440,60416,512,4398,K_\n62976,60928,512,1526,__\n61952,61440,512,1606,__\n"
    assert index_from_csv(text) == [IndexPacket(61440, 60416, 512, True, 4398), IndexPacket(62976, 60928, 512, False, 1526),
                                    IndexPacket(61952, 61440, 512, False, 1606)]
    assert index_from_csv("4021,N/A,33,4606,K_\n")[0].dts is None
    with pytest.raises(SmartCutFallback, match="without timestamps"):
        index_from_csv("N/A,0,512,100,K_\n")


def test_concat_list_has_explicit_durations() -> None:
    plan = plan_smart_cut(stream(12), TB, 1.5, 9.1)
    assert concat_list(plan) == ("ffconcat version 1.0\nfile piece0.mp4\nduration 0.500000\nfile piece1.mp4\n"
                                 "duration 6.000000\nfile piece2.mp4\nduration 1.100000\n")


AVCC_DUMP = """
00000000: 0164 000d ffe1 001a 6764 000d acd9 4141  .d......gd....AA
00000010: 9f9f 0110 0000 0300 1000 0003 03c0 f142  ...............B
00000020: 9960 0100 0468 ef8f cbfd f8f8 00         .`...h.......
"""


def test_hexdump_and_avcc() -> None:
    data = bytes_from_hexdump(AVCC_DUMP)
    assert len(data) == 45 and data[:4] == bytes.fromhex("0164000d")
    sps, pps = parse_avcc(data)
    assert len(sps) == 1 and sps[0][:2] == bytes.fromhex("6764") and len(sps[0]) == 26
    assert pps == (bytes.fromhex("68ef8fcb"),)
    with pytest.raises(SmartCutFallback, match="Annex B"):
        parse_avcc(bytes.fromhex("00000001674d"))


SEI = (b"\x00\x00\x02\xab\x06\x05\xff\xff\xa7\xdcE\xe9\xbd\xe6\xd9H\xb7\x96,\xd8 \xd9#\xee\xefx264 - core 164 r3095 "
       b"baee400 - H.264/MPEG-4 AVC codec - Copyleft 2003-2022 - http://www.videolan.org/x264.html - options: "
       b"cabac=1 ref=3 deblock=1:-1:-1 analyse=0x3:0x113 me=hex subme=7 psy=1 psy_rd=1.00:0.00 mixed_ref=1 "
       b"chroma_qp_offset=-2 8x8dct=1 cqm=0 interlaced=0 bluray_compat=0 constrained_intra=0 bframes=3 b_pyramid=2 "
       b"direct=1 weightb=1 open_gop=0 weightp=2 keyint=250 keyint_min=25 intra_refresh=0 rc=crf crf=23.0 "
       b"nal_hrd=none\x00\x80")


def test_x264_options_to_params() -> None:
    options = x264_options_from_sei(SEI)
    assert options["bframes"] == "3" and options["nal_hrd"] == "none"
    assert x264_params(options, 31) == (
        "cabac=1:ref=3:bframes=3:b-pyramid=2:weightb=1:weightp=2:8x8dct=1:constrained-intra=0:bluray-compat=0:"
        "chroma-qp-offset=-2:keyint=infinite:scenecut=0:direct=spatial:deblock=-1,-1:psy=0:crf=23.0:level=3.1")
    assert x264_options_from_sei(b"\x00\x00\x01\x06 something else") is None
    assert b_frame_depth(options) == 3 and b_frame_depth({}) == 0


def test_pieces_get_one_idr_each_unless_the_source_is_all_intra() -> None:
    """keyint=infinite:scenecut=0: a re-encoded piece's only IDR is its first frame (no join
    IDR -> IDR); keyint=1 is kept because it is the one keyint that changes the SPS."""
    options = x264_options_from_sei(SEI)
    assert ":keyint=infinite:scenecut=0:" in x264_params(options, 31)
    assert ":keyint=1:" in x264_params({**options, "keyint": "1"}, 31)


@pytest.mark.parametrize(("change", "reason"), [
    ({"open_gop": "1"}, "open GOPs"), ({"interlaced": "tff"}, "interlaced"), ({"cqm": "1"}, "quantizer matrices"),
    ({"rc": "2pass", "bitrate": None}, "rate control"),
])
def test_x264_settings_we_cannot_join(change: dict, reason: str) -> None:
    options = {k: v for k, v in {**x264_options_from_sei(SEI), **change}.items() if v is not None}
    with pytest.raises(SmartCutFallback, match=reason):
        x264_params(options, 31)


def test_abr_sources_use_abr_for_the_same_pic_init_qp() -> None:
    options = {**x264_options_from_sei(SEI), "rc": "abr", "bitrate": "2000"}
    assert ":bitrate=2000:" in x264_params(options, 40)


def test_level_names() -> None:
    assert [level_name(v) for v in (31, 40, 13, 9, None, 0)] == ["3.1", "4.0", "1.3", "1b", None, None]


# -- commands and the pieces we read back ------------------------------------------------------

WL = ["-format_whitelist", "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,flv,mpegts,mp3,ogg,wav,aac,mpeg",
      "-protocol_whitelist", "file"]


def source() -> MediaInfo:
    v = VideoStream(0, "h264", "High", 31, "yuv420p", 1280, 720, Fraction(30), TB, 2, "progressive", 360)
    a = AudioStream(1, "aac", "LC", 48000, 2)
    return MediaInfo("mov,mp4,m4a,3gp,3g2,mj2", 12.0, 1000, v, a, 1, 1)


def test_pieces_command_exact_argv() -> None:
    plan = plan_smart_cut(stream(12), TB, 1.5, 9.1)
    cmd = build_pieces_command(Path("/w/src.mp4"), source(), plan, "cabac=1:crf=23.0", Path("/w/s"),
                               preset="veryfast", threads=2)
    encode = ["-c:v", "libx264", "-fps_mode", "passthrough"]
    tail = ["-threads", "2", "-video_track_timescale", "15360", "-x264-params", "cabac=1:crf=23.0"]
    assert cmd[8:] == [
        "-filter_threads", "2",
        # head: decoded from its GOP's keyframe (0 s; seek half a frame past it), trimmed to 1.5 s on the output side
        *WL, "-ss", "0.016666", "-t", "2.483334", "-threads", "2", "-i", "/w/src.mp4",
        *WL, "-ss", "2.000000", "-t", "6.5", "-i", "/w/src.mp4",  # middle: on the keyframe, no decoder
        *WL, "-ss", "8.000000", "-t", "1.6", "-threads", "2", "-i", "/w/src.mp4",  # tail: starts on its keyframe
        "-map", "0:0", "-f", "mp4", *encode, "-frames:v", "15", "-pix_fmt", "yuv420p", "-preset", "veryfast",
        "-ss", "1.466667", *tail, "/w/s/piece0.mp4",
        "-map", "1:0", "-f", "mp4", "-c:v", "copy", "-frames:v", "180", "-video_track_timescale", "15360",
        "/w/s/piece1.mp4",
        "-map", "2:0", "-f", "mp4", *encode, "-frames:v", "33", "-pix_fmt", "yuv420p", "-preset", "veryfast", *tail,
        "/w/s/piece2.mp4",
    ]
    single = build_pieces_command(Path("/w/src.mp4"), source(), plan, "", Path("/w/s"), preset="veryfast", threads=0)
    assert "-threads" not in single and "-filter_threads" not in single


def test_join_command_copies_the_audio_once_over_the_whole_range() -> None:
    plan = plan_smart_cut(stream(12), TB, 1.5, 9.1)
    cmd = build_join_command(Path("/w/src.mp4"), source(), plan, Path("/w/s/list.ffconcat"), "mp4", Path("/w/o.mp4"))
    assert cmd[8:] == [
        "-f", "concat", "-auto_convert", "0", "-format_whitelist", "concat,mov,mp4,m4a,3gp,3g2,mj2",
        "-protocol_whitelist", "file", "-safe", "1", "-i", "/w/s/list.ffconcat",
        *WL, "-ss", "1.500000", "-t", "8.1", "-i", "/w/src.mp4",
        "-map", "0:v:0", "-map", "1:1", "-f", "mp4", "-c", "copy", "-copypriorss", "0", "-movflags", "+faststart",
        "-t", "7.600000", "-video_track_timescale", "15360", "/w/o.mp4",
    ]
    mkv = build_join_command(Path("/w/src.mp4"), source(), plan, Path("/w/s/l"), "mkv", Path("/w/o.mkv"))
    assert "matroska" in mkv and "-movflags" not in mkv


def box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return (8 + len(body)).to_bytes(4, "big") + kind + body


def test_read_mp4_track_finds_avcc_and_sample_sizes(tmp_path: Path) -> None:
    avcc = bytes_from_hexdump(AVCC_DUMP)
    avc1 = box(b"avc1", bytes(78), box(b"avcC", avcc))
    stsd = box(b"stsd", bytes(8), avc1)
    stsz = box(b"stsz", bytes(4), (0).to_bytes(4, "big"), (3).to_bytes(4, "big"),
               *(n.to_bytes(4, "big") for n in (4398, 100, 90)))
    moov = box(b"moov", box(b"trak", box(b"mdia", box(b"minf", box(b"stbl", stsd, stsz)))))
    path = tmp_path / "piece0.mp4"
    path.write_bytes(box(b"ftyp", b"isom") + box(b"mdat", bytes(5000)) + moov)
    assert read_mp4_track(path) == Mp4Track(avcc, 3, 4398)
    (tmp_path / "bad.mp4").write_bytes(box(b"ftyp", b"isom"))
    with pytest.raises(SmartCutFallback, match="no moov"):
        read_mp4_track(tmp_path / "bad.mp4")
