"""SIGTERM with busy workers: in-flight jobs finish within stop_timeout, or are killed at the
deadline and their items go back to the consuming end of Q; nothing is lost."""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING

from services import assert_no_processes_under, pid_gone

if TYPE_CHECKING:
    from conftest import ClipperHarness


def slow_job(http, job_id: str) -> dict:
    # /slow/ trickles at http.slow_rate bytes/s; short.mp4 is ~0.4 MB
    return {"id": job_id, "source": http.url("/slow/short.mp4"), "clips": [{"name": "a", "start": 0, "end": 2}]}


def push_slow_jobs(clipper: ClipperHarness, http, n: int, prefix: str) -> dict[str, bytes]:
    return {f"{prefix}{i}": clipper.push(slow_job(http, f"{prefix}{i}")) for i in range(n)}


def wait_busy(clipper: ClipperHarness, http, workers: int) -> list[bytes]:
    """Until every worker holds an item and has started downloading it."""
    clipper.wait_until(lambda: len(clipper.processing()) == workers and http.count("/slow/", "GET") >= workers,
                       20, f"{workers} jobs in flight")
    return clipper.processing()


def assert_each_in_one_place(clipper: ClipperHarness, raws: dict[str, bytes]) -> dict[str, str]:
    """Every item is in exactly one of Q/processing/retry/dead, or its job is done."""
    where = {}
    for job_id, raw in raws.items():
        places = clipper.places(raw)
        done = clipper.job(job_id).get("status") == "done"
        assert len(places) + int(done) == 1, f"{job_id}: places={places} done={done}\n{clipper.diagnostics()}"
        where[job_id] = "done" if done else places[0]
    return where


def test_stop_lets_in_flight_jobs_finish_and_leaves_the_rest_queued(clipper: ClipperHarness, http) -> None:
    http.slow_rate = 150_000  # ~3 s per download
    clipper.configure(**{"workers.count": 2, "daemon.stop_timeout": 30})
    clipper.start()
    raws = push_slow_jobs(clipper, http, 4, "d")
    held = wait_busy(clipper, http, 2)
    in_flight = {j for j, raw in raws.items() if raw in held}
    assert len(in_flight) == 2

    stop = clipper.stop(timeout=60)
    assert stop.returncode == 0, stop
    assert clipper.status().returncode == 3

    where = assert_each_in_one_place(clipper, raws)
    assert {j for j, w in where.items() if w == "done"} == in_flight, where
    assert {j for j, w in where.items() if w == "Q"} == set(raws) - in_flight, where
    assert clipper.processing() == [] and clipper.dead() == []
    assert_no_processes_under(clipper.root, "no wget/ffmpeg of the stopped daemon")

    http.slow_rate = 5_000_000
    clipper.start()
    jobs = clipper.wait_jobs(raws, timeout=60)
    assert {j: s["status"] for j, s in jobs.items()} == {j: "done" for j in raws}
    assert clipper.depths() == {"pending": 0, "processing": 0, "retry": 0, "dead": 0}


def test_stop_deadline_kills_jobs_and_requeues_their_items(clipper: ClipperHarness, http) -> None:
    http.slow_rate = 30_000  # ~14 s per download: cannot finish within the 1 s grace
    clipper.configure(**{"workers.count": 2, "daemon.stop_timeout": 1})
    clipper.start()
    raws = push_slow_jobs(clipper, http, 4, "k")
    held = wait_busy(clipper, http, 2)

    stop = clipper.stop(timeout=30)
    assert stop.returncode == 0, stop
    assert clipper.status().returncode == 3
    assert_no_processes_under(clipper.root, "no wget/ffmpeg of the stopped daemon")

    where = assert_each_in_one_place(clipper, raws)
    assert set(where.values()) == {"Q"}, where
    # the interrupted items went back to the consuming end (the right): they are next in line
    assert sorted(clipper.pending()[-2:]) == sorted(held)
    assert not clipper.output_dir.exists() or not any(p.is_file() for p in clipper.output_dir.rglob("*"))

    http.slow_rate = 5_000_000
    clipper.start()
    jobs = clipper.wait_jobs(raws, timeout=60)
    assert {j: s["status"] for j, s in jobs.items()} == {j: "done" for j in raws}
    assert clipper.dead() == []


def test_second_signal_makes_the_deadline_now(clipper: ClipperHarness, http) -> None:
    http.slow_rate = 30_000
    clipper.configure(**{"workers.count": 2, "daemon.stop_timeout": 120})
    pid = clipper.start()
    raws = push_slow_jobs(clipper, http, 3, "s")
    wait_busy(clipper, http, 2)

    os.kill(pid, signal.SIGTERM)
    time.sleep(1.0)  # two signals sent at once can merge into one; let the first be handled
    os.kill(pid, signal.SIGTERM)
    clipper.wait_until(lambda: pid_gone(pid), 20, "the daemon to exit after the second SIGTERM")
    assert_no_processes_under(clipper.root, "no wget/ffmpeg of the stopped daemon")
    where = assert_each_in_one_place(clipper, raws)
    assert set(where.values()) == {"Q"}, where
    events = [e for e in clipper.log_events() if e.get("event") in ("daemon.draining", "daemon.deadline_now")]
    assert [e["event"] for e in events] == ["daemon.draining", "daemon.deadline_now"], events
    assert len(events[0]["in_flight"]) == 2 and events[0]["stop_timeout"] == 120


def test_stop_with_idle_workers_is_prompt_and_claims_nothing_more(clipper: ClipperHarness, http) -> None:
    clipper.configure(**{"workers.count": 2})
    clipper.start()
    stop = clipper.stop(timeout=15)
    assert stop.returncode == 0, stop
    raw = clipper.push(slow_job(http, "after-stop"))
    assert clipper.places(raw) == ["Q"]
    assert http.count("/slow/") == 0


def test_stop_deadline_kills_a_running_ffmpeg(clipper: ClipperHarness, http) -> None:
    raw = clipper.start_slow_encode(http, **{"daemon.stop_timeout": 1})  # cut short by a 1 s grace

    stop = clipper.stop(timeout=30)
    assert stop.returncode == 0, stop
    assert_no_processes_under(clipper.root, "no wget/ffmpeg of the stopped daemon")
    assert clipper.places(raw) == ["Q"]
    assert not clipper.output_path("clips/encode/long.mp4").exists()

    clipper.configure(**{"media.x264_preset": "veryfast", "workers.ffmpeg_threads": 0})
    clipper.start()
    assert clipper.wait_job("encode", timeout=60)["status"] == "done"
