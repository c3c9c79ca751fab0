"""The output goes away (S3 down, a directory that cannot be written): jobs wait in Q:retry
without using up their attempts, the daemon stops claiming until the output takes writes
again, and every job is done once it does. Nothing is dead-lettered for an outage."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import ClipperHarness


def job(http, job_id: str) -> dict:
    return {"id": job_id, "source": http.url("/media/short.mp4"), "clips": [{"name": "a", "start": 0, "end": 1}]}


def events(clipper: ClipperHarness, name: str) -> list[dict]:
    return [e for e in clipper.log_events() if e.get("event") == name]


def test_s3_outage_longer_than_the_retry_budget_loses_nothing(clipper: ClipperHarness, http, s3_server, s3) -> None:
    clipper.use_s3(s3_server)
    clipper.configure(**{"workers.count": 2, "retry.max_attempts": 2, "retry.backoff_base": 0.3, "retry.backoff_max": 1})
    clipper.start()
    s3_server.stop()
    try:
        ids = [f"o{i}" for i in range(4)]
        for job_id in ids:
            clipper.push(job(http, job_id))
        # more failed uploads than retry.max_attempts allows a message: none of it is the messages' fault
        clipper.wait_until(lambda: len(events(clipper, "output.unavailable")) >= 4, 60, "uploads failing against S3")
        assert clipper.dead() == []
        assert all(clipper.job(j).get("status") in ("queued", "retrying", "running", None) for j in ids)
        # the breaker: while paused, nothing more than one probe job is in flight
        assert len(clipper.processing()) <= 1
    finally:
        s3_server.start()
    jobs = clipper.wait_jobs(ids, timeout=90)
    assert {j: s["status"] for j, s in jobs.items()} == {j: "done" for j in ids}
    assert clipper.dead() == []
    assert events(clipper, "output.back")
    assert sorted(k for k in s3_server.keys() if k.endswith("a.mp4")) == [f"clips/{j}/a.mp4" for j in ids]


def test_unwritable_output_directory_waits_for_ops(clipper: ClipperHarness, http) -> None:
    clipper.configure(**{"workers.count": 1, "retry.max_attempts": 1, "retry.backoff_base": 0.3, "retry.backoff_max": 1})
    clipper.start()
    blocked = clipper.output_path("clips")
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("a file where the output directory should be")  # mkdir of clips/<id> fails
    clipper.push(job(http, "w1"))
    clipper.wait_until(lambda: len(events(clipper, "output.unavailable")) >= 2, 30, "uploads failing")
    assert clipper.dead() == [] and clipper.job("w1").get("status") != "failed"
    blocked.unlink()
    assert clipper.wait_job("w1", timeout=30)["status"] == "done"
    assert clipper.output_path("clips/w1/a.mp4").is_file()


def test_a_key_colliding_with_another_jobs_output_is_the_messages_fault(clipper: ClipperHarness, http) -> None:
    clipper.configure(**{"workers.count": 1})
    clipper.start()
    clipper.push(job(http, "first"))  # writes clips/first/a.mp4
    assert clipper.wait_job("first")["status"] == "done"
    # a valid output_prefix that names the file above as a directory
    clipper.push({**job(http, "second"), "output_prefix": "first/a.mp4"})
    assert clipper.wait_job("second")["status"] == "failed"
    [entry] = clipper.dead()
    assert "collides with another output" in entry["error"]["message"] and entry["attempts"] == 1, entry
    assert not events(clipper, "output.unavailable")
