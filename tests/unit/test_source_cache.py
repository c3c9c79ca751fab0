"""Pure parts of clipper.sources, and the cache directory's rules on a real filesystem."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from clipper.errors import PermanentError
from clipper.jobs.spec import ClipSpec
from clipper.media.command import local_input_options
from clipper.settings import MediaSettings
from clipper.sources.endpoint import parse_range
from clipper.sources.failures import FailureCache
from clipper.sources.origin import Version, parse_content_range
from clipper.sources.outputs import output_key
from clipper.sources.session import LocalProbes, url_identity
from clipper.sources.store import Area, Counters, write_atomic


@pytest.mark.parametrize("header, expected", [
    ("bytes=0-", (0, 999)), ("bytes=10-19", (10, 19)), ("bytes=990-5000", (990, 999)), ("bytes=-10", (990, 999)),
    ("bytes=1000-", "unsatisfiable"), ("bytes=-0", "unsatisfiable"), ("bytes=5-1", None), (None, None),
    ("items=0-1", None), ("bytes=0-1,5-6", None),
])
def test_endpoint_range(header: str | None, expected: object) -> None:
    assert parse_range(header, 1000) == expected


def test_content_range() -> None:
    assert parse_content_range("bytes 0-65535/12694258") == (0, 65535, 12694258)
    assert parse_content_range("bytes 5-9/*") == (5, 9, None)
    assert parse_content_range("bytes */100") is None and parse_content_range(None) is None


def test_version_validator_needs_etag_or_last_modified() -> None:
    assert Version(10, '"a"', None).validator == 'etag:"a"|size:10'
    assert Version(10, None, "Sat, 28 Nov 2026 02:00:00 GMT").validator.startswith("lm:")
    assert Version(10, None, None).validator is None  # never shared between jobs
    assert not Version(10, '"a"', None).same_as(Version(11, '"a"', None))


def test_url_identity_drops_credentials_and_keeps_the_query() -> None:
    assert url_identity("https://user:pw@CDN.example.com/v.mp4") == url_identity("https://cdn.example.com/v.mp4")
    assert url_identity("https://cdn.example.com/v.mp4?id=1") != url_identity("https://cdn.example.com/v.mp4?id=2")


def test_output_key_ignores_the_name_only() -> None:
    media = MediaSettings()
    a = ClipSpec("a", 1.0, 5.0, "copy", "mp4")
    assert output_key("v1", a, media) == output_key("v1", ClipSpec("b", 1.0, 5.0, "copy", "mp4"), media)
    assert output_key("v1", a, media) != output_key("v2", a, media)
    assert output_key("v1", a, media) != output_key("v1", ClipSpec("a", 1.0, 6.0, "copy", "mp4"), media)
    assert output_key("v1", a, media) != output_key("v1", a, MediaSettings(x264_crf=30))


def test_ffmpeg_reaches_only_the_loopback_endpoint_over_http() -> None:
    remote = local_input_options(src="http://127.0.0.1:4242/tok/source.mp4")
    assert remote[:2] == ["-protocol_whitelist", "http,tcp"]
    for other in (Path("/tmp/source.mp4"), "https://cdn.example.com/v.mp4", "http://10.0.0.1:80/x", None):
        assert local_input_options(src=other)[:2] == ["-protocol_whitelist", "file"]


def test_write_atomic_leaves_only_the_complete_file(tmp_path: Path) -> None:
    write_atomic(tmp_path / "b", b"x" * 10)
    assert os.listdir(tmp_path) == ["b"] and (tmp_path / "b").read_bytes() == b"x" * 10


def test_eviction_takes_least_recently_used_entries_and_never_one_in_use(tmp_path: Path) -> None:
    area = Area(tmp_path / "sources", budget=4000, ttl=3600, counters=Counters(tmp_path))
    for n, key in enumerate(["aa1", "bb2", "cc3", "dd4"]):
        lease = area.lease(key)
        write_atomic(lease.dir / "data", b"x" * 1000)
        used = time.time() - 100 + n  # aa1 used longest ago; none past the TTL
        os.utime(lease.dir / ".lock", (used, used))
        if key != "aa1":
            lease.release()
    area.enforce_budget()  # 4000 > 7/8 of 4000: down to 3/4, skipping aa1 which is in use
    left = sorted(d.name for d, _, _ in area.entries())
    assert left == ["aa1", "cc3", "dd4"] and Counters(tmp_path).read()["evictions"] == 1


def test_failure_cache_answers_with_the_reason(tmp_path: Path) -> None:
    failures = FailureCache(tmp_path, ttl=60, counters=Counters(tmp_path))
    failures.check("http://h/x.mp4")  # nothing remembered
    failures.remember("http://h/x.mp4", "source http://h/x.mp4: HTTP 404 Not Found")
    with pytest.raises(PermanentError, match=r"^source http://h/x.mp4: HTTP 404 Not Found \(cached\)$"):
        failures.check("http://h/x.mp4")
    failures.check("http://other:pw@h/x.mp4")  # other credentials: asks the origin itself
    assert Counters(tmp_path).read()["failure_hits"] == 1


def test_a_local_files_probe_is_remembered_until_the_file_changes(tmp_path: Path) -> None:
    probes = LocalProbes()
    f = tmp_path / "a.mp4"
    f.write_bytes(b"one")
    assert probes.identity(f) is None  # just written: a rewrite within the clock's granularity could go unseen
    probes.RACY_SECONDS = 0.0  # rather than wait two seconds
    identity = probes.identity(f)
    probes.put(identity, f, {"format": {"duration": "1"}})
    assert probes.get(identity) == {"format": {"duration": "1"}}
    f.write_bytes(b"two")  # same size, new content: mtime and ctime move
    assert probes.identity(f) != identity
    moved = tmp_path / "b.mp4"
    moved.write_bytes(b"one")
    os.replace(moved, f)  # replaced by rename: another inode
    assert probes.identity(f) != identity
    probes.put(identity, f, {"stale": True})  # the file changed since `identity`: not kept
    assert probes.get(probes.identity(f)) is None


def test_local_probes_keep_the_most_recently_used(tmp_path: Path) -> None:
    probes = LocalProbes()
    probes.RACY_SECONDS, probes.ENTRIES = 0.0, 2
    files = [tmp_path / f"{k}.mp4" for k in range(3)]
    ids = []
    for k, f in enumerate(files):
        f.write_bytes(b"x" * k)
        ids.append(probes.identity(f))
        probes.put(ids[-1], f, {"k": k})
        if k == 1:
            probes.get(ids[0])  # 0 used again: 1 is now the least recently used
    assert probes.get(ids[0]) == {"k": 0} and probes.get(ids[1]) is None and probes.get(ids[2]) == {"k": 2}
