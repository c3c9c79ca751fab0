"""Malformed and hostile messages, pushed raw next to good ones: each bad one ends in Q:dead at
once with a reason, the good ones are done, nothing is written outside the output root, and the
daemon keeps running.

The harness allows private sources (the media server is on 127.0.0.1), but link-local
addresses (169.254.0.0/16, where cloud metadata services live) must be refused anyway.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import TYPE_CHECKING

from schemacheck import explain_rejection

if TYPE_CHECKING:
    from conftest import ClipperHarness

METADATA = "http://169.254.169.254/latest/meta-data"


def clip(**fields) -> list[dict]:
    return [{"name": "a", "start": 0, "end": 2, **fields}]


def hostile_messages(http, tmp_root) -> dict[str, bytes]:
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
    }


def test_hostile_messages_are_dead_lettered_and_good_ones_done(clipper: ClipperHarness, http) -> None:
    clipper.configure(**{"workers.count": 2})
    pid = clipper.start()
    bad = hostile_messages(http, clipper.root)
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
    assert not problems, "\n".join(problems)
    assert len(clipper.dead()) == len(bad)
    for entry in clipper.dead():  # the schema refuses each, or documents the check it cannot express
        explain_rejection(entry["raw"], entry["error"]["message"])

    for job_id in good:
        assert clipper.job(job_id)["status"] == "done", clipper.job(job_id)
    assert clipper.output_path("clips/good1/a.mp4").is_file()
    assert clipper.output_path("clips/good2/b.mp4").is_file()
    assert json.loads(clipper.r.rpop("app:results"))["id"] == "good2"
    assert clipper.r.llen("app:results") == 0

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
