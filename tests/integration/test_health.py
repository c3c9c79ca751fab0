"""`clipper check` against the real daemon and services: healthy is 0; Redis down, the output
gone (bucket missing, S3 stopped), a daemon killed with SIGKILL (once its heartbeat expired)
and a worker stuck without progress are each non-zero with a line that says which."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import ClipperHarness

ENV = "test"


def check(clipper: ClipperHarness, **env: str):
    return clipper.cli("check", ENV, env=env or None, timeout=60)


def unhealthy(clipper: ClipperHarness, **env: str) -> str:
    r = check(clipper, **env)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clipper: unhealthy: "), r.stderr
    return lines[0]


def test_check_healthy_then_redis_down_then_killed(clipper: ClipperHarness, redis_server) -> None:
    clipper.configure(**{"redis.heartbeat_ttl": 2})
    assert "not running" in unhealthy(clipper)
    pid = clipper.start()
    healthy = check(clipper)
    assert healthy.returncode == 0 and f"pid {pid}" in healthy.stdout, healthy
    redis_server.stop()
    try:
        assert "does not answer" in unhealthy(clipper)
    finally:
        redis_server.start()
    clipper.kill9(pid)
    clipper.wait_until(lambda: check(clipper).returncode != 0, 30, "the heartbeat to expire")
    assert "not running" in unhealthy(clipper)


def test_check_and_start_name_a_missing_bucket_and_a_stopped_s3(clipper: ClipperHarness, s3_server, s3) -> None:
    clipper.use_s3(s3_server, **{"output.bucket": "no-such-bucket"})
    clipper.start()
    warnings = [e for e in clipper.log_events() if e.get("event") == "output.unwritable"]
    assert warnings and "does not exist" in warnings[0]["reason"] and warnings[0]["level"] == "warning"
    assert "no-such-bucket" in unhealthy(clipper) and "does not exist" in unhealthy(clipper)
    assert check(clipper, CLIPPER_OUTPUT__BUCKET=s3_server.bucket).returncode == 0
    s3_server.stop()
    try:
        assert "unreachable" in unhealthy(clipper, CLIPPER_OUTPUT__BUCKET=s3_server.bucket)
    finally:
        s3_server.start()


def test_check_calls_a_worker_without_progress_stuck(clipper: ClipperHarness, http) -> None:
    # a source that sends 1 KiB and then nothing for a minute: the worker waits in a read
    clipper.configure(**{"media.stage_timeout": 1, "fetch.timeout": 120, "fetch.connect_timeout": 120,
                         "daemon.stop_timeout": 1, "redis.heartbeat_ttl": 3})
    clipper.start()
    clipper.push({"id": "stuck", "source": http.url("/slow/sample.mp4?bps=20"), "clips": [{"name": "a", "start": 0, "end": 1}]})
    clipper.wait_job("stuck", ("running",))
    clipper.wait_until(lambda: check(clipper).returncode != 0, 30, "the check to call the worker stuck")
    reason = unhealthy(clipper)
    assert "stuck" in reason and "job stuck" in reason and "media.stage_timeout" in reason
