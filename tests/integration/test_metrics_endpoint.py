"""The running daemon's /metrics, scraped over HTTP and parsed with prometheus_client's own
parser while jobs run, succeed, retry and fail: counters and histograms move as the jobs do,
queue depths come from Redis, and no label carries a job id or a URL. The same daemon's
heartbeat counters in `clipper stats`, and `clipper job` for humans and scripts."""

from __future__ import annotations

import json
import urllib.request
from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families
from services import free_port

if TYPE_CHECKING:
    from conftest import ClipperHarness

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> tuple[Samples, set[str]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: Samples = {}
    labels: set[str] = set()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
            labels.update(s.labels.values())
    return samples, labels


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_as_jobs_run_and_fail(clipper_factory, http) -> None:
    clipper: ClipperHarness = clipper_factory()
    port = free_port()
    clipper.configure(**{"workers.count": 2, "metrics.enabled": True, "metrics.port": port,
                         "retry.max_attempts": 3, "retry.backoff_base": 0.2, "retry.backoff_max": 0.5})
    clipper.start()
    first, _ = scrape(port)
    assert value(first, "clipper_redis_up") == 1 and value(first, "clipper_workers") == 2
    assert value(first, "clipper_jobs_total", outcome="done") == 0
    assert value(first, "clipper_output_breaker_state", state="closed") == 1

    slow = {"id": "m-slow", "source": http.url("/slow/short.mp4?bps=100000"), "clips": [{"name": "a", "start": 0, "end": 1}]}
    clipper.push(slow)
    clipper.wait_until(lambda: value(scrape(port)[0], "clipper_jobs_in_flight") == 1, 30, "the slow job in flight")
    clipper.wait_job("m-slow")
    after_one, _ = scrape(port)
    assert value(after_one, "clipper_jobs_total", outcome="done") == 1
    assert value(after_one, "clipper_job_duration_seconds_count", outcome="done") == 1
    assert value(after_one, "clipper_stage_duration_seconds_count", stage="fetch") == 1
    assert value(after_one, "clipper_clips_total", mode="copy", format="mp4") == 1
    assert value(after_one, "clipper_fetched_bytes_total") > 0 and value(after_one, "clipper_uploaded_bytes_total") > 0

    ids = {"m-bad": http.url("/media/not_a_video.mp4"), "m-flaky": http.url("/flaky/m-flaky/1/short.mp4")}
    for job_id, url in ids.items():
        clipper.push({"id": job_id, "source": url, "clips": [{"name": "a", "start": 0, "end": 1}]})
    jobs = clipper.wait_jobs(ids)
    assert jobs["m-bad"]["status"] == "failed" and jobs["m-flaky"]["status"] == "done"
    end, labels = scrape(port)
    assert value(end, "clipper_jobs_total", outcome="done") == 2
    assert value(end, "clipper_jobs_total", outcome="retried") == 1
    assert value(end, "clipper_jobs_total", outcome="dead") == 1
    assert value(end, "clipper_job_failures_total", kind="permanent") == 1
    assert value(end, "clipper_job_failures_total", kind="transient") == 1
    assert value(end, "clipper_job_duration_seconds_count", outcome="dead") == 1
    assert value(end, "clipper_stage_duration_seconds_count", stage="fetch") == 3  # a stage that fails is not timed (m-flaky's first fetch)
    assert value(end, "clipper_subprocess_failures_total", program="ffprobe", reason="exit") >= 1
    assert value(end, "clipper_queue_items", state="dead") == 1 and value(end, "clipper_queue_items", state="pending") == 0
    assert value(end, "clipper_jobs_in_flight") == 0
    leaks = [v for v in labels if "m-" in v or "://" in v or "/" in v or "short.mp4" in v]
    assert not leaks, leaks

    stats = json.loads(clipper.cli("stats", "test", "--json").stdout)
    assert stats["consumers"][0]["counters"] == {"done": 2, "failed": 1, "retried": 1}
    assert "done 2  failed 1  retried 1" in clipper.cli("stats", "test").stdout
    human = clipper.cli("job", "test", "m-bad")
    assert human.returncode == 0 and "status      failed" in human.stdout and "error       permanent:" in human.stdout
    doc = json.loads(clipper.cli("job", "test", "m-flaky", "--json").stdout)
    assert doc["status"] == "done" and doc["attempts"] == 2 and doc["result"]["outputs"][0]["name"] == "a"
    missing = clipper.cli("job", "test", "no-such-job")
    assert missing.returncode == 1 and "no record of job 'no-such-job'" in missing.stderr

    # a second daemon on the same metrics port does not start, and says why
    other = clipper_factory(**{"metrics.enabled": True, "metrics.port": port})
    refused = other.cli("start", "test")
    assert refused.returncode == 1 and f"cannot serve metrics on 127.0.0.1:{port}" in refused.stderr, refused.stderr
