"""Redis goes away (an ops restart) while jobs are in flight: the daemon keeps running, waits,
and records every outcome once Redis is back."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from services import wait_for

if TYPE_CHECKING:
    from conftest import ClipperHarness

OUTAGE = 3.0


def job(http, job_id: str, slow: bool = True) -> dict:
    return {"id": job_id, "source": http.url(f"/{'slow' if slow else 'media'}/short.mp4"),
            "clips": [{"name": "a", "start": 0, "end": 2}]}


def outage(redis_server, clipper: ClipperHarness, seconds: float = OUTAGE) -> None:
    redis_server.stop()
    try:
        time.sleep(seconds)
    finally:
        redis_server.start()
    wait_for(lambda: clipper.r.ping(), 10, "our client to reconnect")


def test_outage_with_jobs_in_flight(clipper: ClipperHarness, http, redis_server) -> None:
    http.slow_rate = 150_000  # ~3 s per download: they finish while Redis is down
    clipper.configure(**{"workers.count": 2})
    pid = clipper.start()
    raws = {f"r{i}": clipper.push(job(http, f"r{i}")) for i in range(4)}
    clipper.wait_until(lambda: len(clipper.processing()) == 2 and http.count("/slow/", "GET") >= 2, 20, "2 jobs in flight")

    outage(redis_server, clipper)

    jobs = clipper.wait_jobs(raws, timeout=60)
    assert {j: s["status"] for j, s in jobs.items()} == {j: "done" for j in raws}, clipper.diagnostics()
    assert clipper.running_pid() == pid, "the daemon must survive a Redis outage"
    assert clipper.depths() == {"pending": 0, "processing": 0, "retry": 0, "dead": 0}
    for job_id in raws:
        assert clipper.output_path(f"clips/{job_id}/a.mp4").is_file()


def test_outage_while_idle_then_new_work(clipper: ClipperHarness, http, redis_server) -> None:
    pid = clipper.start()
    outage(redis_server, clipper, 2.0)
    clipper.push(job(http, "after", slow=False))
    assert clipper.wait_job("after", timeout=45)["status"] == "done"
    assert clipper.running_pid() == pid
    assert clipper.depths() == {"pending": 0, "processing": 0, "retry": 0, "dead": 0}


def test_stop_while_redis_is_down_keeps_the_items(clipper: ClipperHarness, http, redis_server) -> None:
    """Stopping during an outage must not lose items: what could not be recorded stays in the
    processing list, and the next start takes it back."""
    http.slow_rate = 150_000
    clipper.configure(**{"workers.count": 1, "daemon.stop_timeout": 1})
    clipper.start()
    raws = {f"x{i}": clipper.push(job(http, f"x{i}")) for i in range(2)}
    clipper.wait_until(lambda: len(clipper.processing()) == 1 and http.count("/slow/", "GET") >= 1, 20, "a job in flight")
    redis_server.stop()
    try:
        stop = clipper.stop(timeout=60)
        assert stop.returncode == 0, stop
    finally:
        redis_server.start()
    wait_for(lambda: clipper.r.ping(), 10, "our client to reconnect")
    for job_id, raw in raws.items():
        done = clipper.job(job_id).get("status") == "done"
        assert len(clipper.places(raw)) + int(done) == 1, (job_id, clipper.places(raw), done)

    http.slow_rate = 5_000_000
    clipper.start()
    jobs = clipper.wait_jobs(raws, timeout=45)
    assert {j: s["status"] for j, s in jobs.items()} == {j: "done" for j in raws}
