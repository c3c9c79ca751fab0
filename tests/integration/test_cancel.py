"""Cancelling jobs: waiting ones (queued, high lane, retrying) are removed and finished at once;
running ones are killed by the daemon that runs them, whichever it is, through their flag in
Redis; finished and unknown ones are left alone."""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING

import pytest
from services import processes_mentioning

from clipper.client import Client
from clipper.jobs.spec import job_id_for_raw
from clipper.queue import ReliableQueue
from clipper.settings import FetchSettings

if TYPE_CHECKING:
    from conftest import ClipperHarness

Q = "t:{q}"


@pytest.fixture
def client(redis_server, redis) -> Client:
    c = Client.from_url(redis_server.url, queue=Q, fetch=FetchSettings(allow_private=True), result_ttl=60)
    yield c
    c.close()


def message(job_id: str, **extra) -> dict:
    return {"id": job_id, "source": "http://127.0.0.1:9/v.mp4", "clips": [{"name": "a", "start": 0, "end": 1}],
            "reply_to": "app:replies", **extra}


def test_waiting_jobs_are_removed_and_finished_at_once(client: Client, redis) -> None:
    queue = ReliableQueue(redis, Q, "c1", job_id_of=job_id_for_raw, result_ttl=60)
    for job_id in ("queued", "other1", "other2"):
        client.submit(message(job_id))
    client.submit(message("high", priority="high"))
    raw = queue.claim(0.1)  # the high one (Client.submit put it in Q:high), then put aside to retry
    assert json.loads(raw)["id"] == "high"
    queue.mark_claimed("high")
    queue.retry_later(raw, "high", 60, "503")
    events = redis.pubsub()
    events.subscribe(f"{Q}:events")
    events.get_message(timeout=1)  # the subscription's confirmation

    assert client.cancel("queued") == "cancelled"
    assert client.cancel("high") == "cancelled"
    assert [json.loads(m)["id"] for m in redis.lrange(Q, 0, -1)] == ["other2", "other1"]
    assert redis.zcard(f"{Q}:retry") == 0 and redis.llen(f"{Q}:high") == 0
    for job_id, attempts in (("queued", 0), ("high", 1)):
        status = client.status(job_id)
        assert status is not None and status.status == "cancelled" and status.attempts == attempts
        assert status.result == {"id": job_id, "status": "cancelled", "attempts": attempts, "outputs": [],
                                 "timings": {}, "error": status.result["error"]}
        assert status.result["error"]["kind"] == "cancelled"
    replies = [json.loads(r) for r in redis.lrange("app:replies", 0, -1)]
    assert [(r["id"], r["status"]) for r in replies] == [("high", "cancelled"), ("queued", "cancelled")]
    published = [json.loads(events.get_message(timeout=1)["data"]) for _ in range(2)]
    assert [(e["id"], e["status"]) for e in published] == [("queued", "cancelled"), ("high", "cancelled")]
    events.close()


def test_finished_and_unknown_jobs_are_left_alone(client: Client, redis) -> None:
    queue = ReliableQueue(redis, Q, "c1", job_id_of=job_id_for_raw, result_ttl=60)
    client.submit(message("j"))
    raw = queue.claim(0.1)
    queue.mark_claimed("j")
    queue.ack(raw, "j", {"id": "j", "status": "done"})
    before = redis.hgetall(f"{Q}:job:j")
    assert client.cancel("j") == "done"
    assert redis.hgetall(f"{Q}:job:j") == before
    assert client.cancel("never-pushed") == "unknown"
    assert not redis.exists(f"{Q}:job:never-pushed")


def encode(job_id: str, http) -> dict:
    """About 20 s of the slowest x264 preset on one thread (see ClipperHarness.start_slow_encode)."""
    return {"id": job_id, "source": http.url("/media/sample.mp4"), "reply_to": f"app:{job_id}",
            "clips": [{"name": "long", "start": 0, "end": 28, "mode": "accurate"}]}


def ffmpeg_of(harness: ClipperHarness) -> list[int]:
    return [pid for pid, cmd in processes_mentioning(str(harness.root) + os.sep) if "ffmpeg" in cmd]


def test_running_jobs_are_killed_by_whichever_daemon_runs_them(clipper_factory, http) -> None:
    slow = {"workers.count": 1, "workers.ffmpeg_threads": 1, "media.x264_preset": "veryslow"}
    first, second = clipper_factory(**slow), clipper_factory(**slow)
    first.start()
    first.push(encode("one", http))
    first.wait_until(lambda: ffmpeg_of(first), 20, "the first daemon to be encoding")
    second.start()
    second.push(encode("two", http))  # the first daemon is busy: the second one takes it
    second.wait_until(lambda: ffmpeg_of(second), 20, "the second daemon to be encoding")
    producer = Client.from_url(first.setting("redis.url"), queue=first.queue)

    cancelled_at = time.monotonic()
    assert producer.cancel("two") == "cancelling"  # the job of the second daemon, from a client
    second.wait_until(lambda: not ffmpeg_of(second), 10, "ffmpeg to be killed")
    killed_in = time.monotonic() - cancelled_at
    out = first.cli("cancel", "test", "one")  # and the first daemon's own, from the command line
    assert out.returncode == 0 and "cancelling" in out.stdout, out
    cancelled_at = time.monotonic()  # the flag was set before the command returned
    first.wait_until(lambda: not ffmpeg_of(first), 10, "ffmpeg to be killed")
    killed_in = max(killed_in, time.monotonic() - cancelled_at)

    for harness, job_id in ((first, "one"), (second, "two")):
        result = producer.result(job_id, timeout=30)
        assert result is not None and result["status"] == "cancelled", result
        assert harness.wait_job(job_id)["status"] == "cancelled"
        reply = harness.r.brpop([f"app:{job_id}"], timeout=10)  # delivered from the outbox just after the record
        assert reply is not None and json.loads(reply[1])["status"] == "cancelled", reply
        assert not list(harness.output_dir.rglob("*.*")), "no output object and no manifest"
        assert harness.places(harness.pushed[job_id]) == []  # acknowledged
        assert harness.status().returncode == 0
    assert producer.cancel("one") == "cancelled"  # already cancelled: left as it is
    producer.close()
    assert killed_in < 3.5, f"ffmpeg lived {killed_in:.1f} s after the cancel (the loop checks every second)"
