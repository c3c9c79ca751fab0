"""A job through the real daemon, from LPUSH to a clip in a directory or in S3."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from services import ffprobe

if TYPE_CHECKING:
    from conftest import ClipperHarness

GOP = 2.0  # seconds between keyframes in the sample media; copy mode may cut on them


def job_message(http, job_id: str = "j1", **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "source": http.url("/media/sample.mp4"), "clips": [{"name": "a", "start": 5, "end": 15}],
            "reply_to": "app:results", **extra}


def assert_clip(path_or_url, expected: float) -> None:
    info = ffprobe(path_or_url)
    codecs = {s["codec_type"]: s["codec_name"] for s in info["streams"]}
    assert codecs.get("video") == "h264" and codecs.get("audio") == "aac", codecs
    duration = float(info["format"]["duration"])
    assert abs(duration - expected) <= GOP + 0.1, duration


def assert_result(result: dict[str, Any], job_id: str, key: str) -> None:
    assert result["id"] == job_id
    assert result["status"] == "done"
    assert result["attempts"] == 1
    assert result.get("error") is None
    [out] = [o for o in result["outputs"] if o["name"] == "a"]
    assert out["key"] == key
    assert out["bytes"] > 10_000
    assert abs(out["duration"] - 10) <= GOP + 0.1
    assert out.get("format", "mp4") == "mp4"
    assert "total" in result["timings"]
    assert all(isinstance(v, (int, float)) and v >= 0 for v in result["timings"].values())


def assert_clean_queue(clipper: ClipperHarness) -> None:
    assert clipper.depths() == {"pending": 0, "processing": 0, "retry": 0, "dead": 0}


def test_clip_to_directory(clipper: ClipperHarness, http) -> None:
    clipper.start()
    clipper.push(job_message(http))
    job = clipper.wait_job("j1")
    assert job["status"] == "done", job
    assert job["attempts"] == "1"

    clip = clipper.output_path("clips/j1/a.mp4")
    assert clip.is_file()
    assert_clip(clip, 10)
    result = json.loads(job["result"])
    assert_result(result, "j1", "clips/j1/a.mp4")
    assert result["outputs"][0]["bytes"] == clip.stat().st_size

    manifest = json.loads(clipper.output_path("clips/j1/manifest.json").read_text())
    assert manifest["id"] == "j1"
    assert [o["key"] for o in manifest["outputs"]] == ["clips/j1/a.mp4"]
    # the manifest and the result say the same of the outputs and of the timings
    assert manifest["outputs"] == result["outputs"] and manifest["timings"] == result["timings"]
    assert {"fetch", "probe", "clip", "upload", "total"} <= set(result["timings"])

    reply = clipper.reply("app:results")
    assert reply["status"] == "done" and reply["id"] == "j1"

    events = [e for e in clipper.log_events() if e.get("job_id") == "j1"]
    assert events, "no log line carries job_id=j1"
    assert_clean_queue(clipper)
    # no scratch left behind for a finished job
    assert not any(p.is_file() for p in (clipper.root / "var" / "work").rglob("*"))


def test_clip_to_s3(clipper: ClipperHarness, http, s3_server, s3) -> None:
    clipper.use_s3(s3_server)
    clipper.start()
    clipper.push(job_message(http))
    job = clipper.wait_job("j1")
    assert job["status"] == "done", job

    head = s3.head_object(Bucket="clips", Key="clips/j1/a.mp4")
    assert head["ContentType"] == "video/mp4"
    result = json.loads(job["result"])
    assert_result(result, "j1", "clips/j1/a.mp4")
    assert head["ContentLength"] == result["outputs"][0]["bytes"]
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "clips", "Key": "clips/j1/a.mp4"})
    assert_clip(url, 10)

    manifest = json.loads(s3.get_object(Bucket="clips", Key="clips/j1/manifest.json")["Body"].read())
    assert manifest["id"] == "j1"
    assert [o["key"] for o in manifest["outputs"]] == ["clips/j1/a.mp4"]
    assert sorted(s3_server.keys()) == ["clips/j1/a.mp4", "clips/j1/manifest.json"]
    assert clipper.reply("app:results")["status"] == "done"
    assert_clean_queue(clipper)


def test_enqueue_through_cli_and_publish_events(clipper: ClipperHarness, http) -> None:
    clipper.start()
    sub = clipper.r.pubsub()
    sub.subscribe(clipper.key("events"))
    msg = {"id": "via-cli", "source": http.url("/media/short.mp4"), "clips": [{"name": "c", "start": 0, "duration": 2}]}
    r = clipper.cli("enqueue", "test", json.dumps(msg))
    assert r.returncode == 0 and r.stdout.strip() == "via-cli", r
    assert clipper.wait_job("via-cli")["status"] == "done"
    events = []
    while (m := sub.get_message(timeout=0.5)) is not None:
        if m["type"] == "message":
            event = json.loads(m["data"])
            if event.get("id") == "via-cli":
                events.append(event)
    sub.close()
    assert events and events[-1]["status"] == "done", events
    # the last event is the result itself, as stored in Q:job:<id> and sent to reply_to
    assert {k: v for k, v in events[-1].items() if k != "at"} == clipper.result("via-cli")


def test_several_outputs_and_output_prefix(clipper: ClipperHarness, http) -> None:
    clipper.start()
    clipper.push({"id": "multi", "source": http.url("/media/sample.mp4"), "output_prefix": "user-7/upload-99",
                  "clips": [{"name": "intro", "start": 0, "end": 4},
                            {"name": "tail", "start": "00:00:20", "duration": 4, "mode": "accurate"}],
                  "thumbnails": [{"name": "poster", "at": 3, "width": 128, "height": 128}]})
    job = clipper.wait_job("multi")
    assert job["status"] == "done", job
    base = clipper.output_path("clips/user-7/upload-99")
    assert sorted(p.name for p in base.iterdir()) == ["intro.mp4", "manifest.json", "poster.jpg", "tail.mp4"]
    tail = float(ffprobe(base / "tail.mp4")["format"]["duration"])
    assert abs(tail - 4) < 0.25, tail  # accurate mode is frame-exact (audio may add a frame)
    poster = ffprobe(base / "poster.jpg")["streams"][0]
    assert (poster["width"], poster["height"]) == (128, 128)


def test_redelivered_job_overwrites_the_same_keys(clipper: ClipperHarness, http) -> None:
    clipper.start()
    msg = {"id": "again", "source": http.url("/media/short.mp4"), "clips": [{"name": "a", "start": 0, "end": 2}]}
    clipper.push(msg)
    clipper.wait_job("again")
    first = sorted(p.relative_to(clipper.output_dir) for p in clipper.output_dir.rglob("*") if p.is_file())
    clipper.push(msg)
    # pushed, so it is pending until claimed and held until acknowledged
    clipper.wait_until(lambda: clipper.job("again").get("status") == "done" and not clipper.pending()
                       and not clipper.processing(), 30, "the second delivery to finish")
    clipper.wait_job("again")
    second = sorted(p.relative_to(clipper.output_dir) for p in clipper.output_dir.rglob("*") if p.is_file())
    assert first == second  # same keys, no duplicates, no temporary files left


def test_s3_source_to_directory(clipper: ClipperHarness, s3_server, s3, media_dir) -> None:
    """An s3:// source read with boto3 from the configured endpoint; a missing key and a bucket
    outside fetch.s3_allow_buckets are dead at once, naming the cause."""
    s3.upload_file(str(media_dir / "short.mp4"), s3_server.bucket, "in/short.mp4")
    clipper.configure(**{"fetch.s3_endpoint_url": s3_server.endpoint_url, "fetch.s3_region": "us-east-1",
                         "fetch.s3_allow_buckets": [s3_server.bucket]})
    clipper.start()
    clipper.push({"id": "from-s3", "source": f"s3://{s3_server.bucket}/in/short.mp4",
                  "clips": [{"name": "a", "start": 0, "end": 2}]})
    clipper.push({"id": "no-key", "source": f"s3://{s3_server.bucket}/in/missing.mp4",
                  "clips": [{"name": "a", "start": 0, "end": 2}]})
    clipper.push({"id": "other-bucket", "source": "s3://somebody-elses/x.mp4",
                  "clips": [{"name": "a", "start": 0, "end": 2}]})
    assert clipper.wait_job("from-s3")["status"] == "done"
    assert_clip(clipper.output_path("clips/from-s3/a.mp4"), 2)
    manifest = json.loads(clipper.output_path("clips/from-s3/manifest.json").read_text())
    assert manifest["source"]["url"] == f"s3://{s3_server.bucket}/in/short.mp4"
    for job_id, cause in (("no-key", "no such object"), ("other-bucket", "fetch.s3_allow_buckets")):
        assert clipper.wait_job(job_id)["status"] == "failed"
        [entry] = [d for d in clipper.dead() if d["id"] == job_id]
        assert cause in entry["error"]["message"] and entry["attempts"] == 1, entry
