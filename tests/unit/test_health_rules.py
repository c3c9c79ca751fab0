"""The health rules over a heartbeat (pure): expired, hung, stuck, healthy."""

from __future__ import annotations

from clipper.health import daemon_problem

RULES = {"consumer": "host-1", "heartbeat_ttl": 15.0, "stuck_after": 60.0, "now": 1000.0}


def test_no_heartbeat_and_no_lock_is_not_running() -> None:
    assert "not running" in (daemon_problem(None, lock_pid=None, **RULES) or "")


def test_a_lock_without_heartbeat_is_hung_or_cut_off() -> None:
    reason = daemon_problem(None, lock_pid=4242, **RULES) or ""
    assert "pid 4242" in reason and "redis.heartbeat_ttl (15 s)" in reason


def test_a_job_without_progress_for_longer_than_the_stage_timeout_is_stuck() -> None:
    beat = {"pid": 1, "progress_at": {"fresh": 990.0, "old": 900.0}}
    reason = daemon_problem(beat, lock_pid=1, **RULES) or ""
    assert reason.startswith("stuck: job old") and "100 s" in reason


def test_fresh_progress_or_an_idle_daemon_is_healthy() -> None:
    assert daemon_problem({"pid": 1, "progress_at": {"a": 950.0}}, lock_pid=1, **RULES) is None
    assert daemon_problem({"pid": 1, "progress_at": {}}, lock_pid=1, **RULES) is None
