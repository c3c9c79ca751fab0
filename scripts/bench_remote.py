"""Remote-source benchmark (part of `make bench`): one 10 s copy clip of a source on a
throttled HTTP origin that counts the bytes it sends, three ways:

- clipper: the job's source opened through clipper.sources (cold cache each run), probed, and
  the clip made with `make_clip`, as a job does;
- bare ffmpeg: `ffmpeg -ss S -i URL -t 10 -c copy` straight from the origin;
- download then cut: the whole file fetched first (what clipper did before), then the same cut.

Prints bytes pulled and wall time (medians) and the ratios against both alternatives.

    python scripts/bench_remote.py SOURCE [--runs 3] [--bps 4000000]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from services import MediaHTTPServer  # noqa: E402

from clipper.jobs.clip import make_clip  # noqa: E402
from clipper.jobs.fetch import fetch_source  # noqa: E402
from clipper.jobs.spec import ClipSpec  # noqa: E402
from clipper.media.command import JobControl  # noqa: E402
from clipper.settings import CacheSettings, FetchSettings, Settings  # noqa: E402
from clipper.sources.session import SourceCache, open_source  # noqa: E402

START = 45.3


def run_clipper(url: str, work: Path) -> None:
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        settings = Settings(fetch=FetchSettings(allow_private=True), cache=CacheSettings(dir=Path(tmp) / "cache"))
        control = JobControl("bench-remote")
        cache = SourceCache(settings)
        session = open_source(url, cache, Path(tmp), control)
        try:
            info = session.probe(control)
            make_clip(session.input, info, ClipSpec("c", START, START + 10, "copy", "mp4"), Path(tmp), settings.media,
                      threads=0, control=control, timeout=600)
        finally:
            session.close()
            cache.close()


def run_bare(url: str, work: Path) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", str(START), "-i", url, "-t", "10", "-c", "copy",
                    str(work / "bare.mp4")], check=True)


def run_download(url: str, work: Path) -> None:
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        fetched = fetch_source(url, Path(tmp), FetchSettings(allow_private=True), control=JobControl("bench-download"))
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", str(START), "-i", str(fetched.path),
                        "-t", "10", "-c", "copy", str(work / "download.mp4")], check=True)


def measure(server: MediaHTTPServer, url: str, fn: Callable[[str, Path], None], work: Path,
            runs: int) -> tuple[float, float]:
    """(median seconds, median bytes sent by the origin) over `runs` runs."""
    times, pulled = [], []
    for _ in range(runs):
        server.reset()
        t0 = time.monotonic()
        fn(url, work)
        times.append(time.monotonic() - t0)
        time.sleep(0.2)  # let the origin's handler threads record what they sent
        pulled.append(server.sent("/slow/"))
    return statistics.median(times), statistics.median(pulled)


def bench_remote(src: Path, runs: int, bps: int) -> None:
    server = MediaHTTPServer(src.parent).start()
    try:
        url = server.url(f"/slow/{src.name}?bps={bps}")
        print(f"\nremote source: {src.stat().st_size / 1e6:.1f} MB at {bps / 1e6:g} MB/s, 10 s copy clip at {START} s "
              f"({runs} runs each, medians)")
        cases = {"clipper (range reads)": run_clipper, "bare ffmpeg -ss -i URL": run_bare,
                 "download then cut": run_download}
        med = {}
        for name, fn in cases.items():
            med[name] = measure(server, url, fn, src.parent, runs)
            print(f"  {name:<24} {med[name][0]:>7.2f} s  {med[name][1] / 1e6:>7.2f} MB pulled", flush=True)
        mine = med["clipper (range reads)"]
        for other in ("bare ffmpeg -ss -i URL", "download then cut"):
            theirs = med[other]
            print(f"  clipper / {other:<22} time {mine[0] / theirs[0]:.3f}  bytes {mine[1] / theirs[1]:.3f}")
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bps", type=int, default=4_000_000, help="origin throttle in bytes/s (default 4 MB/s)")
    args = parser.parse_args(argv)
    bench_remote(args.source.resolve(), args.runs, args.bps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
