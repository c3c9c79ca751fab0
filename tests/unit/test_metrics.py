"""The metrics registry: names and types as a scrape sees them, bounded labels, live values
read at scrape time, and the endpoint on a real socket."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from services import free_port

from clipper.metrics import LiveSources, Metrics


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def live(depths: dict[str, int] | Exception, breaker: str = "closed") -> LiveSources:
    def read() -> dict[str, int]:
        if isinstance(depths, Exception):
            raise depths
        return depths
    return LiveSources(workers=4, in_flight=lambda: 2, breaker=lambda: breaker, queue_depths=read)


def test_counters_and_histograms_move_with_their_events() -> None:
    m = Metrics()
    m.job_finished("done", 1.5)
    m.job_finished("dead", 0.2)
    m.job_finished("retried", 3.0)
    m.job_failed("transient")
    m.stage_finished("clip", 0.7)
    m.clip_made("accurate", "mp4")
    m.fetched(1000)
    m.uploaded(250)
    m.subprocess_failed("/usr/bin/ffmpeg", "timeout")
    s = samples(m.text())
    assert s[("clipper_jobs_total", (("outcome", "done"),))] == 1
    assert s[("clipper_jobs_total", (("outcome", "requeued"),))] == 0  # present before the first
    assert s[("clipper_job_failures_total", (("kind", "transient"),))] == 1
    assert s[("clipper_job_duration_seconds_count", (("outcome", "done"),))] == 1
    assert s[("clipper_job_duration_seconds_bucket", (("le", "2.5"), ("outcome", "done")))] == 1
    assert s[("clipper_stage_duration_seconds_sum", (("stage", "clip"),))] == pytest.approx(0.7)
    assert s[("clipper_clips_total", (("format", "mp4"), ("mode", "accurate")))] == 1
    assert s[("clipper_fetched_bytes_total", ())] == 1000
    assert s[("clipper_uploaded_bytes_total", ())] == 250
    assert s[("clipper_subprocess_failures_total", (("program", "ffmpeg"), ("reason", "timeout")))] == 1
    assert m.totals() == {"done": 1, "failed": 1, "retried": 1}


def test_label_values_outside_their_sets_become_other() -> None:
    m = Metrics()
    m.job_finished("job-42")
    m.stage_finished("https://cdn.example.com/v.mp4", 1.0)
    m.subprocess_failed("/tmp/evil", "exit")
    values = {v for f in text_string_to_metric_families(m.text()) for s in f.samples for v in s.labels.values()}
    assert "other" in values
    assert not any("job-42" in v or "example.com" in v or "evil" in v for v in values)


def test_live_values_are_read_at_scrape_time() -> None:
    depths = {"pending": 5, "processing": 2, "retry": 1, "dead": 0}
    s = samples(Metrics(live(depths, breaker="half_open")).text())
    assert s[("clipper_redis_up", ())] == 1
    assert s[("clipper_queue_items", (("state", "pending"),))] == 5
    assert s[("clipper_workers", ())] == 4 and s[("clipper_jobs_in_flight", ())] == 2
    assert s[("clipper_output_breaker_state", (("state", "half_open"),))] == 1
    assert s[("clipper_output_breaker_state", (("state", "closed"),))] == 0
    down = samples(Metrics(live(ConnectionError("refused"))).text())
    assert down[("clipper_redis_up", ())] == 0
    assert not any(name == "clipper_queue_items" for name, _ in down)


def test_served_over_http_on_the_given_address() -> None:
    m = Metrics(live({"pending": 1}))
    port = free_port()
    m.serve("127.0.0.1", port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert families(text)["clipper_queue_items"] is not None
        with pytest.raises(OSError):  # the port is taken: the caller says so and does not start
            Metrics().serve("127.0.0.1", port)
    finally:
        m.close()
