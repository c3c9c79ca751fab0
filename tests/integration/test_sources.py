"""Remote sources through the real daemon: range reads, the shared cache, coalescing, the
failure cache, output reuse (clipper.sources), against the counting HTTP origin."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from services import ffprobe

from clipper.errors import Cancelled
from clipper.media.command import JobControl
from clipper.settings import CacheSettings, FetchSettings, Settings
from clipper.sources.origin import HttpOrigin
from clipper.sources.session import SourceCache, open_source

if TYPE_CHECKING:
    from conftest import ClipperHarness

LONG = 120  # seconds of the long sources


def _encode_long(out: Path) -> None:
    """A 120 s 640x360 H.264/AAC MP4 with the moov at the end: 40 s encoded, then stream-copied
    three times over (a third of the encoding time; the same layout as one long encode)."""
    segment, listing = out.with_name("segment40.mp4"), out.with_name("segments.txt")
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=30:duration={LONG // 3}",
                    "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={LONG // 3}",
                    "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", "60",
                    "-c:a", "aac", "-b:a", "96k", "-shortest", str(segment)], check=True, timeout=300)
    listing.write_text(f"file '{segment.name}'\n" * 3)
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0",
                    "-i", str(listing), "-c", "copy", str(out)], check=True, timeout=60)


def _remux(src: Path, out: Path, *extra: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(src), "-c", "copy",
                    *extra, str(out)], check=True, timeout=60)


@pytest.fixture(scope="session")
def long_media(media_dir: Path) -> dict[str, str]:
    """120 s 640x360 sources in the media server's root: MP4 with the moov at the end, the same
    with faststart, and Matroska. Returns kind -> file name."""
    names = {"end": "long_end.mp4", "fast": "long_fast.mp4", "mkv": "long.mkv"}
    _encode_long(media_dir / names["end"])
    _remux(media_dir / names["end"], media_dir / names["fast"], "-movflags", "+faststart")
    _remux(media_dir / names["end"], media_dir / names["mkv"])
    return names


def needed_bytes(path: Path, start: float, end: float) -> int:
    """What a copy clip [start, end) physically needs: the packets from the keyframe at or
    before `start` up to `end`, plus every byte of the file that is not packet data (headers
    and the index: the moov, Matroska's header and cues)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "packet=stream_index,pts_time,dts_time,flags,size",
                          "-of", "json", str(path)], check=True, capture_output=True, text=True, timeout=60).stdout
    packets = json.loads(out)["packets"]

    def t(p: dict[str, Any]) -> float:
        return float(p.get("pts_time") or p["dts_time"])

    key = max(t(p) for p in packets if p["stream_index"] == 0 and "K" in p["flags"] and t(p) <= start)
    in_range = sum(int(p["size"]) for p in packets if key <= t(p) < end)
    overhead = path.stat().st_size - sum(int(p["size"]) for p in packets)
    return in_range + overhead


def clip_job(http, job_id: str, route: str, start: float, end: float, **clip: Any) -> dict[str, Any]:
    return {"id": job_id, "source": http.url(route), "thumbnails": [],
            "clips": [{"name": "c", "start": start, "end": end, **clip}]}


def cache_stats(daemon: ClipperHarness) -> dict[str, Any]:
    r = daemon.cli("stats", daemon.env_name, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["cache"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_one_copy_clip_pulls_at_most_one_and_a_half_times_what_it_needs(clipper: ClipperHarness, http, media_dir,
                                                                        long_media) -> None:
    """Moov at the end, faststart, Matroska: one daemon, one job each (no cache shared between
    them: each is its own source)."""
    clipper.configure(**{"workers.count": 1})
    clipper.start()
    for kind, name in long_media.items():
        route = f"/media/{name}"
        clipper.push(clip_job(http, kind, route, 60, 70, mode="copy"))
        assert clipper.wait_job(kind)["status"] == "done", clipper.diagnostics()
        result = clipper.result(kind)
        pulled = http.sent(route)
        need = needed_bytes(media_dir / name, 60, 70)
        assert pulled <= 1.5 * need, (kind, pulled, need, http.requests)
        assert result["source"]["bytes_from_origin"] == pulled, kind
        assert abs(result["outputs"][0]["duration"] - 10) <= 2.1, kind
    ranges = [r.range for r in http.records]
    assert all(r and r.startswith("bytes=") and not r.endswith("-") for r in ranges), ranges  # closed ranges only


def test_five_clips_of_one_source_pull_no_byte_twice_and_same_clips_are_reused(clipper: ClipperHarness, http,
                                                                               media_dir, long_media) -> None:
    clipper.configure(**{"workers.count": 5})
    clipper.start()
    route = f"/media/{long_media['end']}"
    ids = [f"diff{i}" for i in range(5)]
    for i, job_id in enumerate(ids):
        clipper.push(clip_job(http, job_id, route, 20 * i, 20 * i + 10, mode="copy"))
    assert all(j["status"] == "done" for j in clipper.wait_jobs(ids, timeout=120).values()), clipper.diagnostics()
    assert http.refetched(route) == 0, sorted(http.fetched_ranges(route))
    assert not any(o.get("reused") for j in ids for o in clipper.result(j)["outputs"])

    http.reset()
    route = f"/media/{long_media['fast']}"
    same = [f"same{i}" for i in range(5)]
    for job_id in same:  # all five claimed at once by the five workers
        clipper.push(clip_job(http, job_id, route, 30, 40, mode="accurate"))
    assert all(j["status"] == "done" for j in clipper.wait_jobs(same, timeout=180).values()), clipper.diagnostics()
    assert http.refetched(route) == 0, sorted(http.fetched_ranges(route))
    outputs = [clipper.result(j)["outputs"][0] for j in same]
    assert sum(1 for o in outputs if o.get("reused")) == 4, outputs
    assert len({o["sha256"] for o in outputs}) == 1
    assert len({sha256(clipper.output_path(o["key"])) for o in outputs}) == 1
    stats = cache_stats(clipper)
    assert stats["output_reuses"] == 4 and stats["misses"] > 0 and stats["hits"] > 0, stats


def test_slow_origin_clip_takes_a_fifth_of_a_whole_download(clipper: ClipperHarness, http, media_dir,
                                                            long_media) -> None:
    rate = 300_000
    clipper.configure(**{"workers.count": 1, "fetch.timeout": 120})
    clipper.start()
    clipper.push(clip_job(http, "slow", f"/slow/{long_media['end']}?bps={rate}", 60, 70, mode="copy"))
    assert clipper.wait_job("slow", timeout=60)["status"] == "done", clipper.diagnostics()
    whole_download = (media_dir / long_media["end"]).stat().st_size / rate  # what fetching it all took
    assert clipper.result("slow")["timings"]["total"] * 5 <= whole_download, clipper.result("slow")["timings"]


def test_kill_9_during_cache_writes_leaves_only_complete_blocks(clipper: ClipperHarness, http, media_dir,
                                                                long_media) -> None:
    clipper.configure(**{"workers.count": 1, "cache.block_size": 16384})
    clipper.start()
    route = f"/slow/{long_media['fast']}?bps=200000"
    clipper.push(clip_job(http, "crash", route, 10, 20, mode="copy"))
    blocks = clipper.root / "var" / "cache" / "sources"
    clipper.wait_until(lambda: len(list(blocks.glob("*/*/blocks/[0-9]*"))) >= 8, 30, "some blocks to be cached")
    clipper.kill9()
    clipper.start()  # takes its own leftovers back at once
    assert clipper.wait_job("crash", timeout=90)["status"] == "done", clipper.diagnostics()
    assert abs(float(ffprobe(clipper.output_path(clipper.result("crash")["outputs"][0]["key"]))["format"]["duration"])
               - 10) <= 2.1
    source = (media_dir / long_media["fast"]).read_bytes()
    for block in blocks.glob("*/*/blocks/*"):
        if block.name.isdigit():  # every block under its final name holds exactly the source's bytes
            start = int(block.name) * 16384
            assert block.read_bytes() == source[start:start + 16384], block
        else:
            assert block.name.endswith(".lock") or ".tmp." in block.name, block


def test_cache_stays_under_its_budget_and_counts_evictions(clipper: ClipperHarness, http) -> None:
    budget = 3 * 1024 * 1024
    clipper.configure(**{"workers.count": 2, "cache.max_bytes": budget, "cache.output_max_bytes": 0})
    clipper.start()
    sizes: list[int] = []
    done = threading.Event()
    root = clipper.root / "var" / "cache" / "sources"

    def size() -> int:
        total = 0
        for dirpath, _, files in os.walk(root):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:  # evicted while we looked
                    pass
        return total

    def watch() -> None:
        while not done.is_set():
            sizes.append(size())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        ids = [f"b{i}" for i in range(20)]
        for i, job_id in enumerate(ids):  # ten sources (the query names a different object), two jobs each
            clipper.push(clip_job(http, job_id, f"/media/sample.mp4?v={i % 10}", 2 * (i // 10), 2 * (i // 10) + 8))
        assert all(j["status"] == "done" for j in clipper.wait_jobs(ids, timeout=180).values()), clipper.diagnostics()
    finally:
        done.set()
        watcher.join()
    assert max(sizes) <= budget, max(sizes)
    stats = cache_stats(clipper)
    assert stats["evictions"] > 0 and stats["bytes"] <= budget and stats["budget"] == budget, stats


def test_changed_etag_gives_the_second_job_the_new_bytes(clipper: ClipperHarness, http, media_dir) -> None:
    clipper.configure(**{"workers.count": 1})
    clipper.start()
    swap = media_dir / "swap.mp4"
    shutil.copyfile(media_dir / "sample.mp4", swap)
    for job_id, replacement in (("before", None), ("after", media_dir / "short.mp4")):
        if replacement is not None:
            tmp = media_dir / "swap.tmp"
            shutil.copyfile(replacement, tmp)
            os.replace(tmp, swap)  # a new file: a new ETag
        clipper.push(clip_job(http, job_id, "/media/swap.mp4", 0, 2, mode="copy"))
        assert clipper.wait_job(job_id)["status"] == "done", clipper.diagnostics()
    manifests = [json.loads(clipper.output_path(clipper.result(j)["manifest"]).read_text()) for j in ("before", "after")]
    assert round(manifests[0]["source"]["duration"]) == 30 and round(manifests[1]["source"]["duration"]) == 4
    assert clipper.result("after")["source"]["bytes_from_origin"] > 0


def test_origin_without_range_support_is_fetched_whole_once(clipper: ClipperHarness, http, media_dir) -> None:
    clipper.configure(**{"workers.count": 1})
    clipper.start()
    size = (media_dir / "sample.mp4").stat().st_size
    for job_id in ("nr1", "nr2"):
        clipper.push(clip_job(http, job_id, "/norange/sample.mp4", 5, 10))
        assert clipper.wait_job(job_id)["status"] == "done", clipper.diagnostics()
    first, second = (clipper.result(j)["source"]["bytes_from_origin"] for j in ("nr1", "nr2"))
    assert first == size and second < size // 4, (first, second)
    assert clipper.result("nr2")["outputs"][0]["reused"] is True
    clipper.push(clip_job(http, "nolength", "/nolength/sample.mp4", 5, 10))
    assert clipper.wait_job("nolength")["status"] == "done", clipper.diagnostics()
    assert clipper.result("nolength")["source"]["bytes_from_origin"] == size


def test_permanent_source_failure_is_remembered(clipper: ClipperHarness, http) -> None:
    clipper.configure(**{"workers.count": 1})
    clipper.start()
    ids = ["gone0", "gone1", "gone2"]
    for job_id in ids:
        clipper.push(clip_job(http, job_id, "/404/missing.mp4", 0, 2))
    jobs = clipper.wait_jobs(ids)
    assert all(j["status"] == "failed" for j in jobs.values())
    assert http.count("/404/") == 1, http.requests
    reasons = [clipper.result(j)["error"]["message"] for j in ids]
    assert "404" in reasons[0] and "(cached)" not in reasons[0]
    assert reasons[1] == reasons[2] == reasons[0] + " (cached)", reasons

    for job_id in ("text0", "text1"):  # not a media file: remembered too
        clipper.push(clip_job(http, job_id, "/media/not_a_video.mp4", 0, 2))
        assert clipper.wait_job(job_id)["status"] == "failed"
    asked = http.count("/media/not_a_video.mp4")
    first, second = (clipper.result(j)["error"]["message"] for j in ("text0", "text1"))
    assert "not a media file" in first and second == first + " (cached)" and asked >= 1, (first, second)
    assert cache_stats(clipper)["failure_hits"] == 3
    clipper.push(clip_job(http, "text2", "/media/not_a_video.mp4", 0, 2))
    assert clipper.wait_job("text2")["status"] == "failed" and http.count("/media/not_a_video.mp4") == asked


def test_s3_source_is_read_in_ranges(clipper: ClipperHarness, s3_server, s3, media_dir, long_media) -> None:
    name = long_media["end"]
    s3.upload_file(str(media_dir / name), s3_server.bucket, f"in/{name}")
    clipper.configure(**{"workers.count": 1, "fetch.s3_endpoint_url": s3_server.endpoint_url,
                         "fetch.s3_region": "us-east-1"})
    clipper.start()
    for job_id in ("s3a", "s3b"):
        clipper.push({"id": job_id, "source": f"s3://{s3_server.bucket}/in/{name}",
                      "clips": [{"name": "c", "start": 60, "end": 70, "mode": "copy"}]})
        assert clipper.wait_job(job_id)["status"] == "done", clipper.diagnostics()
    first, second = (clipper.result(j) for j in ("s3a", "s3b"))
    assert 0 < first["source"]["bytes_from_origin"] <= 1.5 * needed_bytes(media_dir / name, 60, 70), first["source"]
    assert second["source"]["bytes_from_origin"] == 0 and second["outputs"][0]["reused"] is True, second


def test_endpoint_serves_only_the_jobs_own_source_on_loopback(http, media_dir, tmp_path) -> None:
    settings = Settings(fetch=FetchSettings(allow_private=True), cache=CacheSettings(dir=tmp_path / "cache"))
    cache = SourceCache(settings)
    control = JobControl("endpoint")
    session = open_source(http.url("/media/sample.mp4"), cache, tmp_path, control)
    other = open_source(http.url("/media/sample.mp4"), cache, tmp_path, control)  # another job on the same server
    try:
        url = str(session.input)
        parts = urllib.parse.urlsplit(url)
        assert parts.hostname == "127.0.0.1" and len(parts.path.split("/")[1]) >= 32  # an unguessable token
        assert urllib.parse.urlsplit(str(other.input)).port == parts.port and other.input != url
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=100-199"})) as reply:
            assert reply.status == 206 and reply.read() == (media_dir / "sample.mp4").read_bytes()[100:200]
        for path in ("/", "/sample.mp4", parts.path + "x", "/" + "A" * 32 + "/sample.mp4", "/../etc/passwd"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"http://127.0.0.1:{parts.port}{path}")
            assert err.value.code == 404
        session.close()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url, timeout=5)  # gone with the job
        assert err.value.code == 404
        with urllib.request.urlopen(str(other.input), timeout=5) as reply:  # the other job's still there
            assert reply.status == 200
    finally:
        session.close()
        other.close()
        cache.close()


def test_cancel_stops_a_range_read_within_a_second(http) -> None:
    control = JobControl("cancel")
    origin = HttpOrigin(http.url("/slow/sample.mp4?bps=2000"), FetchSettings(allow_private=True), control)
    try:
        opened = origin.open(1024, None)
        assert opened.status == 206 and len(b"".join(opened.chunks)) == 1024
        threading.Timer(0.3, control.cancel).start()
        started = time.monotonic()
        with pytest.raises(Cancelled):
            origin.read(1024, 500_000, opened.version)  # ~4 minutes at this rate
        assert time.monotonic() - started < 1.5
    finally:
        origin.close()
