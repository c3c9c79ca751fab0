"""What `clipper job` and `clipper stats` print (pure formatting)."""

from __future__ import annotations

import io
import json

from clipper.views import HOME_AND_CLEAR, job_json, job_lines, progress_bar, stats_lines, watch

RUNNING = {"status": "running", "attempts": "1", "progress": "clip", "percent": "42.5", "eta": "75.0",
           "started_at": "1700000000.5"}
FAILED = {"status": "failed", "attempts": "3", "progress": "failed", "result": json.dumps(
    {"id": "j", "status": "failed", "error": {"kind": "permanent", "message": "not a media file"}, "outputs": []})}
STATS = {"queue": "q", "pending": 3, "processing": 1, "retry": 0, "dead": 2, "in_flight": {"h-1": 1},
         "consumers": [{"consumer": "h-1", "pid": 7, "workers": 2, "in_flight": 1, "jobs": ["enc"],
                        "counters": {"done": 5, "failed": 1, "retried": 2}, "last_minute": {"done": 4, "failed": 1}}]}


def test_progress_bar() -> None:
    assert progress_bar(50, width=10) == "[#####.....]  50.0%"
    assert progress_bar(140, width=4) == "[####] 140.0%"


def test_job_for_humans_running_and_failed() -> None:
    running = "\n".join(job_lines("enc", RUNNING))
    assert "status      running" in running and "42.5%" in running and "eta 1m15s" in running
    assert "2023-11-14 22:13:20 UTC" in running
    failed = "\n".join(job_lines("j", FAILED))
    assert "attempts    3" in failed and "error       permanent: not a media file" in failed


def test_job_as_json_has_numbers_and_a_parsed_result() -> None:
    doc = job_json(FAILED | {"percent": "100.0"})
    assert doc["attempts"] == 3 and doc["percent"] == 100.0 and doc["result"]["error"]["kind"] == "permanent"


def test_stats_show_counters_per_consumer_and_throughput() -> None:
    text = "\n".join(stats_lines(STATS))
    assert "done 5  failed 1  retried 2" in text and "jobs: enc" in text
    assert "last minute 4 done, 1 failed" in text


def test_watch_redraws_in_place_with_a_bar_per_running_job() -> None:
    out = io.StringIO()
    watch(lambda: (STATS, {"enc": RUNNING}), out, interval=0, frames=2)
    frames = out.getvalue().split(HOME_AND_CLEAR)[1:]
    assert len(frames) == 2
    assert any("enc" in line and "clip" in line and "42.5%" in line for line in frames[-1].splitlines())
