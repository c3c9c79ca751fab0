"""Health: does Redis answer, is this host's daemon for an ENV alive and making progress, and
does its output take a write?

`clipper check` asks all three (exit 0, or non-zero with one line saying what is wrong: a
container HEALTHCHECK, a systemd watchdog helper, a load balancer's probe); the daemon asks the
output question at start and logs the answer as a warning. The daemon's own state comes from
its heartbeat alone (one key: pid, in-flight jobs, when each last made progress), so a check
costs two or three Redis round trips and never touches the daemon's process.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from clipper import logs
from clipper.jobs.upload import Uploader

EXIT_UNHEALTHY = 1


def daemon_problem(beat: dict[str, Any] | None, *, consumer: str, lock_pid: int | None, heartbeat_ttl: float,
                   stuck_after: float, now: float | None = None) -> str | None:
    """Why this host's daemon is not healthy, from its heartbeat (None: expired or never
    written) and the pid holding its lock; None when it is."""
    if beat is None:
        if lock_pid is None:
            return f"not running: no daemon holds the pid lock, no heartbeat from consumer {consumer}"
        return (f"pid {lock_pid} holds the pid lock but consumer {consumer} has not heart-beaten within "
                f"redis.heartbeat_ttl ({heartbeat_ttl:g} s): its loop is hung or it cannot reach Redis")
    now = time.time() if now is None else now
    progress_at: dict[str, float] = beat.get("progress_at") or {}
    if progress_at:
        job, at = min(progress_at.items(), key=lambda item: item[1])
        if now - at > stuck_after:
            return (f"stuck: job {job} has made no progress for {now - at:.0f} s "
                    f"(more than media.stage_timeout = {stuck_after:g} s)")
    return None


def redis_problem(client: redis.Redis, url: str) -> str | None:
    try:
        client.ping()
    except redis.RedisError as exc:
        return logs.scrub(f"Redis at {url} does not answer: {exc}")
    return None


def output_problem(uploader: Uploader) -> str | None:
    try:
        reason = uploader.check_writable()
    except Exception as exc:  # noqa: BLE001 - a check reports, it never raises
        reason = f"output check failed: {type(exc).__name__}: {exc}"
    return logs.scrub(reason) if reason else None
