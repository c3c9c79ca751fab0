"""Media benchmarks: smart vs accurate vs copy, and what clipper adds over a bare ffmpeg.

Generates a 1280x720 30 fps H.264 source (GOP 2 s, B-frames, AAC; 3 minutes by default) in a
temporary directory, then times, in this process and calling `make_clip` directly (probe of
the output included, as in production):

- a 60 s and a 10 s clip in mode accurate and in mode smart (frame-exact both),
- a 10 s clip in mode copy,
- the bare alternatives the same way: `ffmpeg -ss S -i src -t D -c copy` and a bare
  re-encode with the same x264 preset/CRF, to show the overhead clipper adds.

Prints a table of medians (and min/max) over --runs runs, and the ratios; the smart cut
target is smart/accurate <= 0.3. Then the remote-source benchmark (scripts/bench_remote.py)
on the same source served by a throttled origin: clipper vs bare ffmpeg vs download-then-cut.

    python scripts/bench.py [--seconds 180] [--runs 3] [--keep DIR] [--remote-bps 4000000]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clipper.jobs.clip import make_clip  # noqa: E402
from clipper.jobs.probe import probe_media  # noqa: E402
from clipper.jobs.spec import ClipSpec  # noqa: E402
from clipper.media.command import JobControl  # noqa: E402
from clipper.settings import MediaSettings  # noqa: E402
from scripts.bench_remote import bench_remote  # noqa: E402

SMART_TARGET = 0.3


def generate_source(path: Path, seconds: int) -> float:
    t0 = time.monotonic()
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate=30:duration={seconds}",
         "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
         "-c:v", "libx264", "-preset", "veryfast", "-g", "60", "-sc_threshold", "0", "-bf", "2", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart", str(path)],
        check=True,
    )
    return time.monotonic() - t0


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.monotonic()
        fn()
        times.append(time.monotonic() - t0)
    return times


def bare(cmd: list[str]) -> Callable[[], None]:
    return lambda: subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *cmd], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=180, help="length of the generated source (default 180)")
    parser.add_argument("--runs", type=int, default=3, help="runs per case, the median is reported (default 3)")
    parser.add_argument("--keep", type=Path, help="generate into (and reuse) this directory instead of a temporary one")
    parser.add_argument("--remote-bps", type=int, default=4_000_000, help="origin throttle of the remote benchmark")
    args = parser.parse_args(argv)
    if args.seconds < 100:
        parser.error("--seconds must be at least 100 (the 60 s clip starts at 30.5 s)")

    work = args.keep or Path(tempfile.mkdtemp(prefix="clipper-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        src = work / "source.mp4"
        if not src.exists():
            print(f"generating a {args.seconds} s 1280x720 30 fps H.264/AAC source (GOP 2 s, B-frames) ...", flush=True)
            print(f"  took {generate_source(src, args.seconds):.1f} s", flush=True)
        info = probe_media(src)
        media = MediaSettings()
        control = JobControl("bench")
        out = work / "out"
        out.mkdir(exist_ok=True)

        def clip(mode: str, start: float, end: float) -> Callable[[], object]:
            spec = ClipSpec(f"{mode}-{start:g}", start, end, mode, "mp4", mode_was_explicit=True)

            def run() -> object:
                result = make_clip(src, info, spec, out, media, threads=0, control=control, timeout=600)
                if result.mode != mode:
                    raise SystemExit(f"{mode} fell back to {result.mode}: {result.note}")
                return result
            return run

        encode = ["-c:v", "libx264", "-preset", media.x264_preset, "-crf", str(media.x264_crf),
                  "-c:a", "aac", "-b:a", media.audio_bitrate, "-movflags", "+faststart"]
        cases = [
            ("accurate 60 s", clip("accurate", 30.5, 90.5)),
            ("smart 60 s", clip("smart", 30.5, 90.5)),
            ("accurate 10 s", clip("accurate", 45.3, 55.3)),
            ("smart 10 s", clip("smart", 45.3, 55.3)),
            ("copy 10 s", clip("copy", 45.3, 55.3)),
            ("bare ffmpeg re-encode 60 s", bare(["-ss", "30.5", "-i", str(src), "-t", "60", *encode, str(out / "b1.mp4")])),
            ("bare ffmpeg copy 10 s", bare(["-ss", "45.3", "-i", str(src), "-t", "10", "-c", "copy",
                                            "-movflags", "+faststart", str(out / "b2.mp4")])),
        ]
        results: dict[str, list[float]] = {}
        print(f"\n{'case':<28} {'median':>8} {'min':>8} {'max':>8}   ({args.runs} runs each)")
        for name, fn in cases:
            results[name] = times = timed(fn, args.runs)
            print(f"{name:<28} {statistics.median(times):>7.3f}s {min(times):>7.3f}s {max(times):>7.3f}s", flush=True)

        med = {name: statistics.median(t) for name, t in results.items()}
        smart_ratio = med["smart 60 s"] / med["accurate 60 s"]
        print("\nratios (medians)")
        print(f"  smart / accurate, 60 s clip:        {smart_ratio:.3f}  (target <= {SMART_TARGET}:"
              f" {'met' if smart_ratio <= SMART_TARGET else 'NOT met'})")
        print(f"  smart / accurate, 10 s clip:        {med['smart 10 s'] / med['accurate 10 s']:.3f}")
        print(f"  clipper accurate / bare re-encode:  {med['accurate 60 s'] / med['bare ffmpeg re-encode 60 s']:.3f}"
              f"  (+{med['accurate 60 s'] - med['bare ffmpeg re-encode 60 s']:.3f} s)")
        print(f"  clipper copy / bare copy:           {med['copy 10 s'] / med['bare ffmpeg copy 10 s']:.3f}"
              f"  (+{med['copy 10 s'] - med['bare ffmpeg copy 10 s']:.3f} s: the output read back from its index, the wrappers)")
        bench_remote(src, args.runs, args.remote_bps)
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
