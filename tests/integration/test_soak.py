"""Soak (make soak; kept out of the default run): many jobs through two daemons while one is
killed with -9 and restarted, Redis restarts, and the other is stopped and started again. At
the end every job is done and its output written, nothing is dead, retrying or held."""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

import pytest
from services import wait_for

if TYPE_CHECKING:
    from conftest import ClipperHarness

JOBS = 120
ROUNDS = 6


@pytest.mark.slow
def test_soak_with_crashes_restarts_and_a_redis_restart(clipper_factory, http, redis_server) -> None:
    rng = random.Random(7)  # deterministic chaos
    http.slow_rate = 2_000_000
    a: ClipperHarness = clipper_factory(**{"workers.count": 2, "redis.heartbeat_ttl": 3})
    b: ClipperHarness = clipper_factory(**{"workers.count": 2, "redis.heartbeat_ttl": 3})
    a.start()
    b.start()
    ids = [f"soak{i}" for i in range(JOBS)]
    for job_id in ids:
        a.push({"id": job_id, "source": http.url(rng.choice(["/media/short.mp4", "/slow/short.mp4"])),
                "clips": [{"name": "c", "start": 0, "end": 1, "mode": rng.choice(["copy", "copy", "smart"])}]})

    for round_ in range(ROUNDS):
        time.sleep(rng.uniform(1.0, 3.0))
        action = ("kill9", "stop", "redis")[round_ % 3]
        if action == "kill9":
            a.kill9()
            a.start()
        elif action == "stop":
            assert b.stop(timeout=60).returncode == 0
            b.start()
        else:
            redis_server.stop()
            time.sleep(1.0)
            redis_server.start()
            wait_for(lambda: a.r.ping(), 10, "Redis back")

    jobs = a.wait_jobs(ids, timeout=300)
    assert {j: s["status"] for j, s in jobs.items()} == {j: "done" for j in ids}
    assert a.dead() == [] and a.processing() == [] and a.retrying() == [] and a.pending() == []
    for job_id in ids:  # both daemons write to their own output dir; each key exists in one of them
        assert a.output_path(f"clips/{job_id}/c.mp4").is_file() or b.output_path(f"clips/{job_id}/c.mp4").is_file()
