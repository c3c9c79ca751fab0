"""Malformed and hostile messages and media, against the real daemon: each bad message ends in
Q:dead at once with a reason (without the daemon's paths), the good ones are done, nothing is
written outside the output root, no job overwrites another's outputs, hostile media stay within
the memory and time limits, and the daemon keeps running.

The harness allows private sources (the media server is on 127.0.0.1), but link-local
addresses (169.254.0.0/16, where cloud metadata services live) must be refused anyway.
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from typing import TYPE_CHECKING, Any

import pytest
from schemacheck import explain_rejection

if TYPE_CHECKING:
    from conftest import ClipperHarness

METADATA = "http://169.254.169.254/latest/meta-data"


def clip(**fields) -> list[dict]:
    return [{"name": "a", "start": 0, "end": 2, **fields}]


def hostile_messages(http, tmp_root, queue: str) -> dict[str, bytes]:
    good_source = http.url("/media/short.mp4")

    def msg(**fields) -> bytes:
        body = {"source": good_source, "clips": clip()}
        body.update(fields)
        return json.dumps(body).encode()

    redirect = http.url("/redirect?to=" + urllib.parse.quote(METADATA, safe=""))
    return {
        "bad json": b'{"source": "http://x", "clips": [',
        "not utf-8": b"\xff\xfe\x00{\x80",
        "empty": b"",
        "blank": b"   \n",
        "array": json.dumps([good_source]).encode(),
        "number": b"42",
        "null": b"null",
        "true": b"true",
        "huge string": json.dumps("x" * 300_000).encode(),
        "huge message": msg(padding="y" * 300_000),
        "source not a string": json.dumps({"source": 123, "clips": clip()}).encode(),
        "clips not a list": msg(clips={"name": "a", "start": 0, "end": 2}),
        "unknown field": msg(colour="red"),
        "no source": json.dumps({"clips": clip()}).encode(),
        "file url": msg(source="file:///etc/passwd"),
        "file url in root": msg(source=f"file://{tmp_root}/settings/test.toml"),
        "gopher": msg(source="gopher://127.0.0.1:70/_INFO"),
        "ftp": msg(source="ftp://127.0.0.1/x.mp4"),
        "concat": msg(source="concat:/etc/passwd|/etc/hosts"),
        "data url": msg(source="data:video/mp4;base64,AAAA"),
        "bare word": json.dumps("hello").encode(),
        "metadata": msg(source=METADATA),
        "metadata bare url": METADATA.encode(),
        "metadata decimal": msg(source="http://2852039166/latest/meta-data"),
        "redirect to metadata": msg(source=redirect),
        "hls playlist": msg(source=http.url("/media/playlist.m3u8")),
        "dotdot id": msg(id="../../etc"),
        "dotdot clip name": msg(clips=clip(name="../../evil")),
        "slash clip name": msg(clips=clip(name="a/b")),
        "abs output_prefix": msg(output_prefix="/tmp/evil"),
        "dotdot output_prefix": msg(output_prefix="ok/../../evil"),
        "huge start": msg(clips=clip(start=1e308, end=1e308 + 1)),
        "huge end": msg(clips=clip(end=1e308)),
        "negative start": msg(clips=clip(start=-5)),
        "end before start": msg(clips=clip(start=10, end=5)),
        "zero length": msg(clips=clip(start=1, end=1)),
        "end and duration": msg(clips=clip(duration=3)),
        "duplicate names": msg(clips=clip() + clip()),
        "no outputs": msg(clips=[]),
        "copy to gif": msg(clips=clip(mode="copy", format="gif")),
        "unknown format": msg(clips=clip(format="exe")),
        "unknown mode": msg(clips=clip(mode="fast")),
        "bool start": msg(clips=clip(start=True)),
        "string number start": msg(clips=clip(start="5")),
        "bad time string": msg(clips=clip(start="1:2:3:4")),
        "huge dimension": msg(clips=clip(mode="accurate", width=100_000)),
        "deep nesting": b"[" * 100_000 + b"]" * 100_000,  # RecursionError in json, not a crash
        "reply_to with spaces": msg(reply_to="app results; FLUSHALL"),
        "nan start": b'{"source": "%s", "clips": [{"name": "a", "start": NaN, "end": 2}]}' % good_source.encode(),
        "infinity end": b'{"source": "%s", "clips": [{"name": "a", "start": 0, "end": Infinity}]}' % good_source.encode(),
        "too many clips": msg(clips=[{"name": f"c{i}", "start": 0, "end": 1} for i in range(500)]),
        "oversized with id": msg(id="big-1", reply_to="app:oversized", padding="y" * 300_000),
        "not a video": msg(source=http.url("/media/not_a_video.mp4")),
        # a trailing newline would make files and keys with "\n" in them
        "id with newline": msg(id="nl\n"),
        "name with newline": msg(clips=clip(name="a\n")),
        "prefix with newline": msg(output_prefix="colA\n"),
        "reply_to with newline": msg(reply_to="app:results\n"),
        # the daemon's own keys: a reply there becomes a message, a dead letter, a job record...
        "reply_to the queue": msg(reply_to=queue),
        "reply_to a processing list": msg(reply_to=f"{queue}:processing:someone"),
        "reply_to the dead letters": msg(reply_to=f"{queue}:dead"),
        "reply_to another job": msg(reply_to=f"{queue}:job:good1"),
        "reply_to a heartbeat": msg(reply_to=f"{queue}:consumer:someone"),
    }


def test_hostile_messages_are_dead_lettered_and_good_ones_done(clipper: ClipperHarness, http) -> None:
    clipper.configure(**{"workers.count": 2})
    pid = clipper.start()
    bad = hostile_messages(http, clipper.root, clipper.queue)
    good = {
        "good1": clipper.push({"id": "good1", "source": http.url("/media/short.mp4"), "clips": clip()}),
    }
    for raw in bad.values():
        clipper.push(raw)
    good["good2"] = clipper.push({"id": "good2", "source": http.url("/media/sample.mp4"),
                                  "clips": [{"name": "b", "start": 1, "end": 3}], "reply_to": "app:results"})

    clipper.wait_jobs(good, timeout=60)
    clipper.wait_until(lambda: clipper.depths()["dead"] >= len(bad) and not clipper.pending()
                       and not clipper.processing() and not clipper.retrying(), 60, "every bad message to be dead")

    dead_by_raw: dict[str, dict] = {}
    for entry in clipper.dead():
        dead_by_raw[entry["raw"]] = entry
    problems = []
    for name, raw in bad.items():
        entry = dead_by_raw.get(raw.decode("utf-8", "replace"))
        if entry is None:
            problems.append(f"{name}: not in dead ({clipper.places(raw)})")
            continue
        error = entry.get("error")
        text = str(error.get("message") if isinstance(error, dict) else error or "")
        if not text.strip():
            problems.append(f"{name}: no reason")
        if entry.get("attempts") != 1:
            problems.append(f"{name}: attempts {entry.get('attempts')} (a permanent error is dead at once): {text}")
        if isinstance(error, dict) and error.get("kind") not in (None, "permanent"):
            problems.append(f"{name}: error kind {error.get('kind')}: {text}")
        if str(clipper.root) in text or "/var/work/" in text:
            problems.append(f"{name}: the reason shows the daemon's paths: {text}")
    assert not problems, "\n".join(problems)
    assert len(clipper.dead()) == len(bad)
    for entry in clipper.dead():  # the schema refuses each, or documents the check it cannot express
        explain_rejection(entry["raw"], entry["error"]["message"])

    for job_id in good:
        assert clipper.job(job_id)["status"] == "done", clipper.job(job_id)
    assert clipper.output_path("clips/good1/a.mp4").is_file()
    assert clipper.output_path("clips/good2/b.mp4").is_file()
    assert clipper.reply("app:results")["id"] == "good2"
    assert clipper.r.llen("app:results") == 0
    # an oversized message is still known by its explicit id, and its producer hears of it
    assert dead_by_raw[bad["oversized with id"].decode()]["id"] == "big-1"
    reply = clipper.reply("app:oversized")
    assert (reply["id"], reply["status"]) == ("big-1", "failed") and "limit" in reply["error"]["message"]

    # nothing written outside the output root, nor anything but the good jobs inside it
    written = sorted(str(p.relative_to(clipper.output_dir)) for p in clipper.output_dir.rglob("*") if p.is_file())
    assert written == ["clips/good1/a.mp4", "clips/good1/manifest.json",
                       "clips/good2/b.mp4", "clips/good2/manifest.json"], written
    assert not any(p.name == "evil" for p in clipper.root.rglob("*"))
    # the playlist's and the redirect's targets were never reached through the media server
    assert http.count("/media/playlist.m3u8", "GET") <= 1

    status = clipper.status()
    assert status.returncode == 0 and str(pid) in status.stdout, "the daemon must survive hostile messages"
    log_text = "\n".join(clipper.log_lines())
    assert "Traceback" not in log_text, "hostile input must not reach an unhandled exception"


def test_metadata_address_refused_even_with_allow_private(clipper: ClipperHarness, http) -> None:
    clipper.start()
    for job_id, source in (("md1", METADATA), ("md2", f"http://169.254.1.1:{http.port}/media/short.mp4"),
                           ("md3", http.url("/redirect?to=" + urllib.parse.quote(METADATA, safe="")))):
        clipper.push({"id": job_id, "source": source, "clips": clip()})
    jobs = clipper.wait_jobs(["md1", "md2", "md3"], timeout=30)
    for job in jobs.values():
        assert job["status"] == "failed", job
        assert job["attempts"] == "1", job
        error = json.loads(job["result"])["error"]
        assert error["kind"] == "permanent", error
        assert error["message"].strip()


# -- outputs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("output", ["dir", "s3"])
def test_a_job_never_overwrites_another_jobs_outputs(clipper: ClipperHarness, http, output: str, request) -> None:
    if output == "s3":
        clipper.use_s3(request.getfixturevalue("s3_server"))
        s3 = request.getfixturevalue("s3")

    def stored(key: str) -> bytes:
        if output == "s3":
            return s3.get_object(Bucket="clips", Key=key)["Body"].read()
        return clipper.output_path(key).read_bytes()

    clipper.start()
    job_a = {"id": "A", "source": http.url("/media/short.mp4"), "clips": clip(), "output_prefix": "colA"}
    clipper.push(job_a)
    assert clipper.wait_job("A")["status"] == "done"
    clipper.push({"id": "B", "source": http.url("/media/sample.mp4"), "clips": [{"name": "a", "start": 5, "end": 7}],
                  "output_prefix": "colA"})
    job_b = clipper.wait_job("B")
    error = json.loads(job_b["result"])["error"]
    assert (job_b["status"], error["kind"]) == ("failed", "permanent"), job_b
    assert "'A'" in error["message"] and "colA" in error["message"], error

    recorded = clipper.result("A")["outputs"][0]
    assert hashlib.sha256(stored(recorded["key"])).hexdigest() == recorded["sha256"]
    assert json.loads(stored("clips/colA/manifest.json"))["id"] == "A"

    # at-least-once stays idempotent: the same job again overwrites its own outputs
    first_finish = clipper.job("A")["finished_at"]
    clipper.push(job_a)
    clipper.wait_until(lambda: clipper.job("A").get("finished_at") not in (None, first_finish), 60, "A to finish again")
    assert clipper.job("A")["status"] == "done", clipper.job("A")


# -- hostile media -------------------------------------------------------------------------------

def peak_child_rss(clipper: ClipperHarness, job_id: str, timeout: float = 120) -> tuple[int, dict[str, Any]]:
    """The largest resident set (bytes) any child of the daemon (ffprobe, ffmpeg) had while
    `job_id` ran, from the daemon's `subprocess.finished` events (wait4's peak of each child:
    sampling /proc misses a child that lives 50 ms), and the finished job."""
    job = clipper.wait_job(job_id, ("done", "failed"), timeout=timeout)
    ran = [e for e in clipper.log_events() if e.get("event") == "subprocess.finished" and e.get("job_id") == job_id]
    assert ran, f"no subprocess.finished event for {job_id}\n{clipper.diagnostics()}"
    return max(e["max_rss_bytes"] for e in ran), job


def test_a_huge_picture_is_refused_after_the_probe_within_the_memory_limit(clipper: ClipperHarness, http,
                                                                           hostile_media) -> None:
    """16000x16000 PNG frames in 3 MB: before any decode, refused naming the limit and the size."""
    limit = 768 * 1024**2
    clipper.configure(**{"media.max_child_memory": limit})
    clipper.start()
    clipper.push({"id": "huge", "source": http.url("/media/huge.mp4"),
                  "clips": [{"name": "a", "start": 0, "end": 1, "mode": "accurate"}],
                  "thumbnails": [{"name": "t", "at": 0, "format": "png"}]})
    peak, job = peak_child_rss(clipper, "huge")
    error = json.loads(job["result"])["error"]
    assert (job["status"], job["attempts"], error["kind"]) == ("failed", "1", "permanent"), job
    assert "16000x16000" in error["message"] and "media.max_source_pixels" in error["message"], error
    assert 0 < peak < limit, f"a child of the daemon reached {peak / 2**20:.0f} MiB"


def test_a_cover_thumbnail_of_a_tall_source_crops_before_it_scales(clipper: ClipperHarness, http,
                                                                  hostile_media) -> None:
    clipper.start()
    clipper.push({"id": "tall", "source": http.url("/media/tall.mp4"),
                  "thumbnails": [{"name": "t", "at": 1, "width": 4096, "height": 4096, "fit": "cover"}]})
    peak, job = peak_child_rss(clipper, "tall")
    assert job["status"] == "done", job
    out = clipper.result("tall")["outputs"][0]
    assert (out["width"], out["height"]) == (4096, 4096)
    assert peak < 300 * 1024**2, f"a child of the daemon reached {peak / 2**20:.0f} MiB"


def test_the_job_budget_stops_slow_thumbnails_for_good(clipper: ClipperHarness, http) -> None:
    """Eight large PNG thumbnails take far longer than a 2 s budget for the whole job: the job
    is stopped and dead at once (the same input would use up the budget again)."""
    clipper.configure(**{"media.job_timeout": 2, "workers.ffmpeg_threads": 1})
    clipper.start()
    clipper.push({"id": "slow", "source": http.url("/media/sample.mp4"),
                  "thumbnails": [{"name": f"t{i}", "at": 1.9 + 2 * i, "width": 4096, "height": 4096, "format": "png"}
                                 for i in range(8)]})
    job = clipper.wait_job("slow", timeout=60)
    error = json.loads(job["result"])["error"]
    assert (job["status"], job["attempts"], error["kind"]) == ("failed", "1", "permanent"), job
    assert "media.job_timeout = 2 s" in error["message"], error
    assert not clipper.output_path("clips/slow").exists()


# -- keys planted under the queue ----------------------------------------------------------------

def test_keys_of_another_type_under_the_queue_block_nothing(clipper: ClipperHarness, http) -> None:
    """A list planted as a crashed consumer's heartbeat, a hash as another's processing list:
    the crashed consumer's item is still reaped and done, the daemon says what it found, and
    `clipper stats` still reports."""
    held = json.dumps({"id": "held", "source": http.url("/media/short.mp4"), "clips": clip()}).encode()
    clipper.r.sadd(clipper.key("consumers"), "ghost", "squatted")
    clipper.r.rpush(clipper.key("consumer:ghost"), "planted")
    clipper.r.lpush(clipper.key("processing:ghost"), held)
    clipper.r.hset(clipper.key("processing:squatted"), "planted", "1")
    clipper.start()
    assert clipper.wait_job("held")["status"] == "done"

    findings = [e.get("finding", "") for e in clipper.log_events() if e.get("event") == "queue.foreign_key"]
    assert any(f.startswith(f"{clipper.key('consumer:ghost')} holds a list") for f in findings), findings
    assert any(f.startswith(f"{clipper.key('processing:squatted')} holds a hash") for f in findings), findings
    r = clipper.cli("stats", clipper.env_name, "--json")
    assert r.returncode == 0, r
    assert any("processing:squatted holds a hash" in f for f in json.loads(r.stdout)["foreign"]), r.stdout
    assert clipper.status().returncode == 0
