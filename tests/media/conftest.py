"""Media for the media-stage tests, generated once per session with `ffmpeg -f lavfi` (the
checks that read outputs back are in mediacheck.py).

Sources are small (320x180) and short so the whole directory runs in well under a minute of
encoding; testsrc2 changes every frame, so a clip that starts one frame off shows up as a
PSNR drop (~22 dB instead of >35 dB).
"""

from __future__ import annotations

import concurrent.futures
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest
from mediacheck import Source

from clipper.jobs.probe import probe_media
from clipper.media.command import JobControl
from clipper.settings import MediaSettings

SECONDS = 12


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, timeout=120)


def _lavfi(seconds: float, rate: str = "30", size: str = "320x180") -> list[str]:
    return ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}",
            "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"]


def _h264(path: Path, *, gop: int, bframes: int, rate: str = "30", seconds: float = SECONDS,
          extra: tuple[str, ...] = (), audio: bool = True, x264: str = "") -> None:
    params = ["-x264-params", x264] if x264 else []
    _ffmpeg(*_lavfi(seconds, rate), "-map", "0:v", *(["-map", "1:a"] if audio else []),
            "-c:v", "libx264", "-preset", "veryfast", "-g", str(gop), "-sc_threshold", "0", "-bf", str(bframes),
            "-pix_fmt", "yuv420p", *params, *(["-c:a", "aac", "-b:a", "64k"] if audio else []), *extra,
            "-movflags", "+faststart", str(path))


def _make_sources(d: Path) -> dict[str, Path]:
    jobs = {
        "gop2": lambda p: _h264(p, gop=60, bframes=2),
        "gop1": lambda p: _h264(p, gop=30, bframes=3),
        "gop05": lambda p: _h264(p, gop=15, bframes=2),
        "gop2_nob": lambda p: _h264(p, gop=60, bframes=0),
        "ntsc": lambda p: _h264(p, gop=60, bframes=2, rate="30000/1001"),
        "noaudio": lambda p: _h264(p, gop=60, bframes=2, seconds=8, audio=False),
        "opengop": lambda p: _h264(p, gop=30, bframes=3, seconds=8, x264="open-gop=1"),
        "vp9": lambda p: _ffmpeg(*_lavfi(4), "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8",
                                 "-c:a", "libopus", str(p)),
        "m4a": lambda p: _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=6",
                                 "-c:a", "aac", "-b:a", "64k", str(p)),
        "mp3": lambda p: _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=6",
                                 "-c:a", "libmp3lame", "-b:a", "64k", str(p)),
    }
    ext = {"vp9": "webm", "m4a": "m4a", "mp3": "mp3"}
    paths = {name: d / f"{name}.{ext.get(name, 'mp4')}" for name in jobs}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for f in [pool.submit(job, paths[name]) for name, job in jobs.items()]:
            f.result()
    # derived from gop2: the same stream in Matroska (1 ms time base), without x264's SEI
    # (looks like another encoder made it), and with a 90° display rotation
    paths["gop2_mkv"] = d / "gop2_mkv.mkv"
    _ffmpeg("-i", str(paths["gop2"]), "-c", "copy", str(paths["gop2_mkv"]))
    paths["nosei"] = d / "nosei.mp4"
    _ffmpeg("-i", str(paths["gop2"]), "-c", "copy", "-bsf:v", "filter_units=remove_types=6", str(paths["nosei"]))
    paths["rotated"] = d / "rotated.mp4"
    _ffmpeg("-i", str(paths["gop2"]), "-t", "4", "-c", "copy", "-metadata:s:v:0", "rotate=90", str(paths["rotated"]))
    return paths


GOPS = {"gop2": 2.0, "gop1": 1.0, "gop05": 0.5, "gop2_nob": 2.0, "ntsc": 60 / (30000 / 1001), "noaudio": 2.0,
        "opengop": 1.0, "gop2_mkv": 2.0, "nosei": 2.0, "rotated": 2.0}


@pytest.fixture(scope="session")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Source]:
    d = tmp_path_factory.mktemp("media-sources")
    out = {}
    for name, path in _make_sources(d).items():
        out[name] = Source(name, path, probe_media(path), GOPS.get(name),
                           Fraction(30000, 1001) if name == "ntsc" else Fraction(30))
    return out


@pytest.fixture
def media() -> MediaSettings:
    return MediaSettings()


@pytest.fixture
def control() -> JobControl:
    return JobControl("test")
