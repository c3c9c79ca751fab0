"""Transient failures are retried with backoff (then dead-lettered); permanent ones go to
Q:dead at once with a reason naming the cause, and the source is not fetched again."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import ClipperHarness

MAX_ATTEMPTS = 3


def message(http, job_id: str, path: str, start: float = 0, end: float = 2) -> dict:
    return {"id": job_id, "source": http.url(path), "clips": [{"name": "a", "start": start, "end": end}]}


def reason(entry: dict) -> str:
    error = entry.get("error")
    return str(error.get("message", error)) if isinstance(error, dict) else str(error)


def dead_entry(clipper: ClipperHarness, job_id: str) -> dict:
    entries = [d for d in clipper.dead() if d.get("id") == job_id]
    assert len(entries) == 1, (job_id, clipper.dead())
    return entries[0]


@pytest.fixture
def daemon(clipper: ClipperHarness) -> ClipperHarness:
    clipper.configure(**{"retry.max_attempts": MAX_ATTEMPTS, "retry.backoff_base": 0.2, "retry.backoff_max": 1})
    clipper.start()
    return clipper


def test_flaky_source_succeeds_on_the_third_attempt(daemon: ClipperHarness, http) -> None:
    daemon.push(message(http, "flaky", "/flaky/k1/2/sample.mp4", 5, 15))
    job = daemon.wait_job("flaky", timeout=45)
    assert job["status"] == "done", job
    assert job["attempts"] == "3"
    assert json.loads(job["result"])["attempts"] == 3
    assert daemon.output_path("clips/flaky/a.mp4").is_file()
    assert http.count("/flaky/k1/") >= 3
    assert daemon.dead() == [] and daemon.depths()["retry"] == 0


@pytest.mark.parametrize("name, path, start, end, words", [
    ("missing", "/404/sample.mp4", 0, 2, ["404"]),
    ("gone", "/status/410", 0, 2, ["410"]),
    ("text", "/media/not_a_video.mp4", 0, 2, ["media", "video", "invalid", "format", "probe", "demux"]),
    ("outside", "/media/sample.mp4", 100, 110, ["100", "start", "past", "outside", "beyond"]),
])
def test_permanent_failure_is_dead_at_once(daemon: ClipperHarness, http, name, path, start, end, words) -> None:
    raw = daemon.push(message(http, name, path, start, end))
    job = daemon.wait_job(name, timeout=30)
    assert job["status"] == "failed", job
    result = json.loads(job["result"])
    assert result["status"] == "failed" and result["error"]["kind"] == "permanent", result

    entry = dead_entry(daemon, name)
    assert entry["attempts"] == 1
    assert entry["raw"] == raw.decode()
    text = reason(entry)
    assert text.strip() and any(w in text.lower() for w in words), text
    assert daemon.places(raw) == ["dead"]
    # asked once (a 4xx), or read in ranges of which none was fetched twice
    assert http.count(path, "HEAD") == 0 and http.count(path, "GET") >= 1, http.requests
    assert http.refetched(path) == 0 and (http.count(path) == 1 or path.startswith("/media")), http.requests
    assert not daemon.output_path(f"clips/{name}").exists()


@pytest.mark.parametrize("name, path, words", [
    ("unavailable", "/status/503", ["503"]),
    ("truncated", "/truncated/short.mp4", []),
])
def test_transient_failure_is_retried_then_dead(daemon: ClipperHarness, http, name, path, words) -> None:
    raw = daemon.push(message(http, name, path))
    job = daemon.wait_job(name, timeout=45)
    assert job["status"] == "failed", job
    assert job["attempts"] == str(MAX_ATTEMPTS)
    entry = dead_entry(daemon, name)
    assert entry["attempts"] == MAX_ATTEMPTS
    text = reason(entry)
    assert text.strip() and all(w in text for w in words), text
    assert http.count(path, "GET") >= MAX_ATTEMPTS
    assert daemon.places(raw) == ["dead"]
    assert not daemon.output_path(f"clips/{name}").exists()


def test_retry_state_is_visible_while_waiting(clipper: ClipperHarness, http) -> None:
    # a long backoff so the item is seen waiting in Q:retry
    clipper.configure(**{"retry.max_attempts": 3, "retry.backoff_base": 30, "retry.backoff_max": 60})
    clipper.start()
    raw = clipper.push(message(http, "waiting", "/flaky/k2/5/short.mp4"))
    clipper.wait_until(lambda: clipper.job("waiting").get("status") == "retrying", 20, "the job to be retrying")
    assert clipper.places(raw) == ["retry"]
    score = clipper.r.zrange(clipper.key("retry"), 0, -1, withscores=True)[0][1]
    assert score > time.time() + 5  # due later, by the backoff
    assert http.count("/flaky/k2/", "GET") + http.count("/flaky/k2/", "HEAD") <= 2
