"""Job throughput (part of `make bench`): the real daemon against a bare ffmpeg loop, in one run.

Generates a 30 s 640x360 H.264/AAC MP4 with ffmpeg lavfi, starts a private redis-server and a
Range-capable HTTP origin on loopback (tests/services.py), and the real daemon with `clipper
start` (the test harness of tests/conftest.py: its own settings, 2 workers, outputs in a temp
directory). Then, per case, N jobs through each of:

- bare: a `ThreadPoolExecutor(2)` running per job what clipper runs: `ffprobe -show_format
  -show_streams SRC`, then per clip `ffmpeg -ss S -i SRC -t 2 -c copy OUT` and `ffprobe OUT`;
- clipper: N messages pushed at once, timed until the last job's result is recorded.

Cases: single-clip copy jobs from a local file (`file://` under fetch.allow_file_roots), the
same from the HTTP origin (fetch.allow_private), and 4-clip copy jobs from the local file.
Every job cuts other ranges than the others, so the daemon's output cache reuses nothing.
Prints jobs/s for both and clipper/bare per case; targets: >= 0.95x single-clip, >= 1.5x 4-clip.

    python scripts/bench_throughput.py [--jobs 40] [--rounds 1] [--keep DIR]
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import ClipperHarness  # noqa: E402
from services import MediaHTTPServer, RedisServer  # noqa: E402

SECONDS = 30
CLIP = 2.0
TARGETS = {"file, 1 clip": 0.95, "http, 1 clip": 0.95, "file, 4 clips": 1.5}


@dataclass(frozen=True)
class Case:
    name: str
    source: str  # what the job's message and the bare loop both read
    clips: int


def generate_source(path: Path) -> None:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=30:duration={SECONDS}",
         "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={SECONDS}",
         "-c:v", "libx264", "-preset", "veryfast", "-g", "60", "-sc_threshold", "0", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-movflags", "+faststart", str(path)],
        check=True,
    )


def starts(job: int, clips: int) -> list[float]:
    """Distinct ranges per job (so no output is reused), all inside the source."""
    first = (job * 0.37) % 6
    return [round(first + k * 6 + (job % 7) * 0.1, 2) for k in range(clips)]


def bare_job(case: Case, job: int, out: Path) -> None:
    probe = ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json"]
    subprocess.run([*probe, case.source], check=True, capture_output=True)
    for k, start in enumerate(starts(job, case.clips)):
        target = out / f"{job}-{k}.mp4"
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", str(start), "-i", case.source,
                        "-t", str(CLIP), "-c", "copy", str(target)], check=True)
        subprocess.run([*probe, str(target)], check=True, capture_output=True)


def run_bare(case: Case, jobs: range, out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda j: bare_job(case, j, out), jobs))
    return time.monotonic() - t0


def message(case: Case, job: int, tag: str) -> dict:
    clips = [{"name": f"c{k}", "start": s, "end": s + CLIP, "mode": "copy"} for k, s in enumerate(starts(job, case.clips))]
    return {"id": f"{tag}-{job}", "source": case.source, "clips": clips}


def run_clipper(harness: ClipperHarness, case: Case, jobs: range, tag: str) -> float:
    """Push every job at once; the time until the last one's result is recorded."""
    messages = [message(case, j, tag) for j in jobs]
    keys = [harness.key(f"job:{m['id']}") for m in messages]
    t0 = time.monotonic()
    for m in messages:
        harness.push(m)
    while True:
        with harness.r.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(key, "status")
            statuses = [(s or b"").decode() for s in pipe.execute()]
        if all(s in ("done", "failed", "cancelled") for s in statuses):
            break
        time.sleep(0.01)
    seconds = time.monotonic() - t0
    failed = [m["id"] for m, s in zip(messages, statuses, strict=True) if s != "done"]
    if failed:
        raise SystemExit(f"{len(failed)} clipper jobs did not finish done, e.g. {harness.job(failed[0])}")
    return seconds


def measure(case: Case, jobs: int, rounds: int, harness: ClipperHarness, work: Path) -> tuple[float, float]:
    """jobs/s of bare and clipper (medians over rounds, after one warm-up job each). The
    machine's load drifts, so the order alternates: bare first in even rounds, clipper in odd."""
    run_bare(case, range(1000, 1001), work / "bare-warm")
    run_clipper(harness, case, range(1000, 1001), f"warm-{case.clips}-{case.source[:4]}")
    bare: list[float] = []
    ours: list[float] = []
    for r in range(rounds):
        job_ids = range(r * jobs, (r + 1) * jobs)
        tag = f"{case.name.replace(' ', '').replace(',', '-')}-{r}"
        for side in ("bare", "clipper") if r % 2 == 0 else ("clipper", "bare"):
            if side == "bare":
                bare.append(jobs / run_bare(case, job_ids, work / f"bare-{r}"))
            else:
                ours.append(jobs / run_clipper(harness, case, job_ids, tag))
    return statistics.median(bare), statistics.median(ours)


def report(results: dict[str, tuple[float, float]], jobs: int) -> None:
    print(f"\n{'case':<16} {'bare jobs/s':>12} {'clipper jobs/s':>15} {'clipper/bare':>13}   target ({jobs} jobs)")
    for name, (bare, ours) in results.items():
        ratio = ours / bare
        verdict = "met" if ratio >= TARGETS[name] else "NOT met"
        print(f"{name:<16} {bare:>12.2f} {ours:>15.2f} {ratio:>12.2f}x   >= {TARGETS[name]}x {verdict}", flush=True)


def with_services(work: Path, fn: Callable[[ClipperHarness, MediaHTTPServer], None]) -> None:
    media = work / "media"
    redis_server = RedisServer(work / "redis").start()
    http = MediaHTTPServer(media).start()
    client = redis_server.client()
    harness = ClipperHarness(work / "home", redis_server.url, client, **{
        "workers.count": 2, "fetch.allow_file_roots": [str(media)], "fetch.allow_private": True,
        "retry.max_attempts": 1})
    try:
        harness.start()
        fn(harness, http)
    finally:
        harness.stop()
        client.close()
        http.stop()
        redis_server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40, help="jobs per case and side (default 40)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per case, the median is reported (default 1)")
    parser.add_argument("--keep", type=Path, help="work in this directory (kept) instead of a temporary one")
    args = parser.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="clipper-throughput-"))
    (work / "media").mkdir(parents=True, exist_ok=True)
    src = work / "media" / "source.mp4"
    if not src.exists():
        generate_source(src)
    results: dict[str, tuple[float, float]] = {}

    def run(harness: ClipperHarness, http: MediaHTTPServer) -> None:
        cases = [Case("file, 1 clip", src.as_uri(), 1), Case("http, 1 clip", http.url("/media/source.mp4"), 1),
                 Case("file, 4 clips", src.as_uri(), 4)]
        for case in cases:
            print(f"{case.name}: {args.jobs} jobs x {args.rounds} round(s) ...", flush=True)
            results[case.name] = measure(case, args.jobs, args.rounds, harness, work)

    try:
        with_services(work, run)
        report(results, args.jobs)
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
