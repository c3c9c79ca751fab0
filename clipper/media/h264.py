"""What an H.264 source's headers say, for smart cut: SPS/PPS from the avcC record, x264's
settings from its SEI (and the `-x264-params` that reproduce them), and the avcC and sample
table of an MP4 piece we wrote (a box walk that reads only `moov`).

Pure parsers apart from `read_source_headers` (one ffprobe) and `read_mp4_track` (one file).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from clipper.jobs.probe import PROBE_TIMEOUT
from clipper.media.command import JobControl, local_input_options, run_command
from clipper.media.isobmff import Unsure, boxes, read_moov
from clipper.media.smartplan import SmartCutFallback


def bytes_from_hexdump(text: str) -> bytes:
    """ffprobe's `-show_data` hexdump ("00000000: 0164 000d ...  ascii") -> bytes."""
    out = bytearray()
    for line in text.splitlines():
        if ":" not in line:
            continue
        hexpart = line.split(":", 1)[1][:41]  # 8 groups of 4 hex digits, single spaces
        out += bytes.fromhex("".join(hexpart.split()))
    return bytes(out)


def parse_avcc(data: bytes) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """AVCDecoderConfigurationRecord -> (SPS NAL units, PPS NAL units)."""
    if len(data) < 7 or data[0] != 1:
        raise SmartCutFallback("the H.264 stream has no avcC configuration (Annex B source)")
    pos = 5
    sps, pps = [], []
    for target in (sps, pps):
        count = data[pos] & (0x1F if target is sps else 0xFF)
        pos += 1
        for _ in range(count):
            size = int.from_bytes(data[pos:pos + 2], "big")
            target.append(bytes(data[pos + 2:pos + 2 + size]))
            pos += 2 + size
    return tuple(sps), tuple(pps)


X264_RE = re.compile(rb"x264 - core (\d+)[^\x00]*? - options: ([^\x00]*)")


def x264_options_from_sei(data: bytes) -> dict[str, str] | None:
    m = X264_RE.search(data)
    if not m:
        return None
    options = {}
    for item in m.group(2).decode("ascii", "replace").split():
        key, _, value = item.partition("=")
        options[key] = value
    return options


@dataclass(frozen=True)
class SourceHeaders:
    sps: tuple[bytes, ...]
    pps: tuple[bytes, ...]
    x264: dict[str, str] | None


def read_source_headers(src: Path, stream: int, *, control: JobControl, timeout: float) -> SourceHeaders:
    """SPS/PPS from the stream's extradata and x264's settings from the first packet's SEI
    (one ffprobe reading one packet)."""
    result = run_command(
        ["ffprobe", "-v", "error", *local_input_options(src=src), "-select_streams", str(stream), "-read_intervals", "%+#1",
         "-show_entries", "packet=data:stream=extradata", "-show_data", "-of", "json", str(src)],
        what="smart cut: stream headers", timeout=min(timeout, PROBE_TIMEOUT), control=control, capture_stdout=True,
    )
    data = json.loads(result.stdout or b"{}")
    streams = data.get("streams") or [{}]
    packets = data.get("packets") or [{}]
    sps, pps = parse_avcc(bytes_from_hexdump(streams[0].get("extradata") or ""))
    return SourceHeaders(sps, pps, x264_options_from_sei(bytes_from_hexdump(packets[0].get("data") or "")))


_DIRECT = {"0": "none", "1": "spatial", "2": "temporal", "3": "auto"}


def level_name(level: int | None) -> str | None:
    if not level or level <= 0:
        return None
    return "1b" if level == 9 else f"{level // 10}.{level % 10}"


def x264_params(options: dict[str, str], level: int | None) -> str:
    """The source's header-relevant x264 settings as an `-x264-params` string (pure), plus
    GOP settings that keep the joins valid. Raises SmartCutFallback for settings whose streams
    cannot be joined cleanly."""
    def flag(key: str) -> str:
        return options.get(key, "0")

    for key, why in (("open_gop", "open GOPs"), ("interlaced", "interlaced video"), ("intra_refresh", "intra refresh")):
        if flag(key) not in ("0", ""):
            raise SmartCutFallback(f"x264 source with {why}")
    if flag("cqm") != "0":
        raise SmartCutFallback("x264 source with custom quantizer matrices")
    params: list[tuple[str, str]] = []
    for key in ("cabac", "ref", "bframes", "b_pyramid", "weightb", "weightp", "8x8dct", "constrained_intra",
                "bluray_compat", "fake_interlaced", "stitchable", "chroma_qp_offset"):
        if key in options:
            params.append((key.replace("_", "-"), options[key]))
    if options.get("keyint") == "1":
        params.append(("keyint", "1"))  # all-intra: the one keyint that changes the SPS (no references)
    else:
        # one IDR per piece, its first frame: a piece then never ends on an IDR, which could
        # share idr_pic_id with the IDR starting the next piece (see smartplan)
        params += [("keyint", "infinite"), ("scenecut", "0")]
    if options.get("direct") in _DIRECT:
        params.append(("direct", _DIRECT[options["direct"]]))
    if "deblock" in options:
        on, _, rest = options["deblock"].partition(":")
        params.append(("deblock", rest.replace(":", ",")) if on == "1" else ("no-deblock", "1"))
    # psy RD/trellis would lower the chroma QP offset again on top of the value x264 printed
    params.append(("psy", "0"))
    rc = options.get("rc", "crf")
    if rc == "crf" and "crf" in options:
        params.append(("crf", options["crf"]))  # CRF's pic_init_qp is the rounded CRF
    elif rc == "cqp" and "qp" in options:
        params.append(("qp", options["qp"]))
    elif rc in ("abr", "2pass", "cbr") and "bitrate" in options:
        params.append(("bitrate", options["bitrate"]))  # ABR: pic_init_qp 26
    else:
        raise SmartCutFallback(f"x264 rate control {rc!r} not reproducible")
    if options.get("nal_hrd", "none") != "none":
        params.append(("nal-hrd", options["nal_hrd"]))
    for key in ("vbv_maxrate", "vbv_bufsize"):
        if key in options:
            params.append((key.replace("_", "-"), options[key]))
    name = level_name(level)
    if name:
        params.append(("level", name))
    return ":".join(f"{k}={v}" for k, v in params)


def b_frame_depth(options: dict[str, str]) -> int:
    """x264's consecutive B-frames (0: none)."""
    value = options.get("bframes", "0")
    return int(value) if value.isdigit() else 0


@dataclass(frozen=True)
class Mp4Track:
    """What we check in a piece we wrote: its H.264 configuration and sample table."""

    avcc: bytes
    samples: int
    first_sample_size: int


def read_mp4_track(path: Path) -> Mp4Track:
    """avcC and sample sizes (stsz) of the first video track of an MP4 (a box walk). Only the
    `moov` box is read: a copied middle piece can be gigabytes of `mdat`."""
    found: dict[bytes, bytes] = {}

    def walk(data: bytes, lo: int, hi: int) -> None:
        for kind, body, end in boxes(data, lo, hi):
            if b"avcC" in found and b"stsz" in found:
                return
            if kind in (b"trak", b"mdia", b"minf", b"stbl"):
                walk(data, body, end)
            elif kind == b"stsd":
                walk(data, body + 8, end)  # version/flags, entry count
            elif kind in (b"avc1", b"avc3"):
                walk(data, body + 78, end)  # the VisualSampleEntry's fixed fields
            elif kind in (b"avcC", b"stsz"):
                found.setdefault(kind, data[body:end])

    try:
        data, _ = read_moov(path)
        walk(data, 0, len(data))
    except Unsure as exc:
        raise SmartCutFallback(f"piece {path.name}: {exc}") from None
    if b"avcC" not in found or b"stsz" not in found:
        raise SmartCutFallback(f"piece {path.name} is not an H.264 MP4")
    stsz = found[b"stsz"]
    uniform, count = int.from_bytes(stsz[4:8], "big"), int.from_bytes(stsz[8:12], "big")
    first = uniform or (int.from_bytes(stsz[12:16], "big") if count else 0)
    return Mp4Track(found[b"avcC"], count, first)
