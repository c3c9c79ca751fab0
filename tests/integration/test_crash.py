"""kill -9 of the daemon mid-job: nothing is lost, the restarted daemon takes its own leftovers
back at once; a message that kills the daemon every time ends in Q:dead after max_attempts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services import assert_no_processes_under

if TYPE_CHECKING:
    from conftest import ClipperHarness


def slow_job(http, job_id: str) -> dict:
    return {"id": job_id, "source": http.url("/slow/short.mp4"), "clips": [{"name": "a", "start": 0, "end": 2}]}


def reason(dead_entry: dict) -> str:
    error = dead_entry.get("error")
    return str(error.get("message", error)) if isinstance(error, dict) else str(error)


def test_kill9_mid_job_then_restart_finishes_everything(clipper: ClipperHarness, http) -> None:
    http.slow_rate = 50_000  # ~8 s per download
    # a long heartbeat: only a daemon that takes its own leftovers back at start finishes in time
    clipper.configure(**{"workers.count": 2, "redis.heartbeat_ttl": 120})
    clipper.start()
    raws = {f"c{i}": clipper.push(slow_job(http, f"c{i}")) for i in range(3)}
    clipper.wait_until(lambda: len(clipper.processing()) == 2 and http.count("/slow/", "GET") >= 2, 20, "2 jobs in flight")

    clipper.kill9()
    assert clipper.status().returncode == 3
    assert_no_processes_under(clipper.root, "the daemon's children die with it")
    # the held items stayed in the processing list, the third in Q: nothing lost
    assert sorted(p for raw in raws.values() for p in clipper.places(raw)) == ["Q", "processing", "processing"]

    http.slow_rate = 5_000_000
    clipper.start()
    jobs = clipper.wait_jobs(raws, timeout=45)
    assert {j: s["status"] for j, s in jobs.items()} == {j: "done" for j in raws}
    assert clipper.dead() == []
    assert clipper.depths() == {"pending": 0, "processing": 0, "retry": 0, "dead": 0}
    for job_id in raws:
        assert clipper.output_path(f"clips/{job_id}/a.mp4").is_file()


def test_kill9_during_ffmpeg_leaves_no_orphan_encoder(clipper: ClipperHarness, http) -> None:
    raw = clipper.start_slow_encode(http)
    clipper.kill9()
    assert_no_processes_under(clipper.root, "the daemon's children die with it")
    assert clipper.places(raw) == ["processing"]

    clipper.configure(**{"media.x264_preset": "veryfast", "workers.ffmpeg_threads": 0})
    clipper.start()
    assert clipper.wait_job("encode", timeout=60)["status"] == "done"
    assert clipper.dead() == []


def test_leftovers_of_a_dead_consumer_are_reaped_by_another_daemon(clipper_factory, http) -> None:
    http.slow_rate = 50_000
    first = clipper_factory(**{"workers.count": 1, "redis.heartbeat_ttl": 3})
    first.start()
    raw = first.push(slow_job(http, "orphan"))
    first.wait_until(lambda: first.processing() == [raw] and http.count("/slow/", "GET") >= 1, 20, "the job in flight")
    first.kill9()
    assert_no_processes_under(first.root, "the daemon's children die with it")

    http.slow_rate = 5_000_000
    second = clipper_factory(**{"workers.count": 1, "redis.heartbeat_ttl": 3})
    second.start()  # another pid file: another consumer id, so it must wait for the heartbeat to expire
    job = second.wait_job("orphan", timeout=45)
    assert job["status"] == "done", job
    assert second.depths() == {"pending": 0, "processing": 0, "retry": 0, "dead": 0}


def test_poison_message_that_kills_the_daemon_ends_in_dead(clipper: ClipperHarness, http) -> None:
    http.slow_rate = 10_000  # never finishes: each attempt is cut short by kill -9
    max_attempts = 3
    clipper.configure(**{"workers.count": 1, "retry.max_attempts": max_attempts})
    raw = clipper.push(slow_job(http, "poison"))

    def buried_or_running(attempt: int) -> str | None:
        job = clipper.job("poison")
        if job.get("status") == "failed":
            return "failed"
        if job.get("attempts") == str(attempt) and http.count("/slow/", "GET") >= attempt:
            return "running"
        return None

    kills = 0
    for _ in range(max_attempts + 2):
        clipper.start()
        attempt = kills + 1
        state = clipper.wait_until(lambda: buried_or_running(attempt), 20,  # noqa: B023 - called right here
                                   f"attempt {attempt} to start or the job to be buried")
        if state == "failed":
            break
        clipper.kill9()
        kills += 1
    assert kills == max_attempts, f"killed {kills} times; expected the item dead after {max_attempts}"
    assert http.count("/slow/", "GET") == max_attempts  # the poison was not run once more

    [entry] = [d for d in clipper.dead() if d.get("id") == "poison"]
    assert entry["raw"] == raw.decode()
    assert entry["attempts"] >= max_attempts
    assert "attempt" in reason(entry).lower(), entry
    assert entry.get("failed_at")
    assert clipper.places(raw) == ["dead"]
    assert clipper.running_pid() == clipper.pid  # the daemon survived the poison this time
