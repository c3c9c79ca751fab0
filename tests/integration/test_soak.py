"""Soak (make soak; kept out of the default run): many jobs through two daemons while one is
killed with -9 and restarted, Redis restarts, and the other is stopped and started again; and
a chaos run of three daemons with replies. At the end every job is done and its output
written, nothing is dead, retrying or held, and every reply was delivered."""

from __future__ import annotations

import json
import random
import time
from typing import TYPE_CHECKING

import pytest
from services import ffprobe, wait_for

if TYPE_CHECKING:
    from conftest import ClipperHarness

JOBS = 120
ROUNDS = 6


def blow(action: str, victim: ClipperHarness, redis_server, redis_down: float) -> None:
    """SIGKILL and restart `victim`, SIGTERM and restart it, or restart Redis (down `redis_down` s)."""
    if action == "sigkill":
        victim.kill9(victim.running_pid())
        victim.start()
    elif action == "sigterm":
        assert victim.stop(timeout=60).returncode == 0
        victim.start()
    else:
        redis_server.stop()
        time.sleep(redis_down)
        redis_server.start()
        wait_for(lambda: victim.r.ping(), 10, "Redis back")


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
        action = ("sigkill", "sigterm", "redis")[round_ % 3]
        blow(action, a if action == "sigkill" else b, redis_server, redis_down=1.0)

    jobs = a.wait_jobs(ids, timeout=300)
    assert {j: s["status"] for j, s in jobs.items()} == {j: "done" for j in ids}
    assert a.dead() == [] and a.processing() == [] and a.retrying() == [] and a.pending() == []
    for job_id in ids:  # both daemons write to their own output dir; each key exists in one of them
        assert a.output_path(f"clips/{job_id}/c.mp4").is_file() or b.output_path(f"clips/{job_id}/c.mp4").is_file()


CHAOS_JOBS = 500
CHAOS_SECONDS = 130


@pytest.mark.slow
def test_chaos_three_daemons_every_job_done_and_every_reply_delivered(clipper_factory, http, redis_server,
                                                                      tmp_path) -> None:
    """Three daemons, 500 jobs with reply_to, random SIGKILL / SIGTERM / Redis restarts for more
    than two minutes: every job done, every reply delivered at least once, nothing left in the
    queue, processing, retry, dead or the outbox, every output a real clip."""
    rng = random.Random(11)  # deterministic chaos
    # attempts: a job may be in flight at several kills; this run is about delivery, not poison
    shared = {"workers.count": 2, "redis.heartbeat_ttl": 3, "daemon.stop_timeout": 5, "retry.max_attempts": 20,
              "output.dir": str(tmp_path / "clips")}  # one output root: a redone job overwrites its keys
    daemons: list[ClipperHarness] = [clipper_factory(**shared) for _ in range(3)]
    for d in daemons:
        d.start()
    a = daemons[0]
    ids = [f"chaos{i}" for i in range(CHAOS_JOBS)]
    for job_id in ids:
        a.push({"id": job_id, "source": http.url("/media/short.mp4"), "reply_to": "app:chaos", "thumbnails": [],
                "clips": [{"name": "c", "start": rng.choice([0, 1, 2]), "duration": 1, "mode": "copy"}]})
    # every kind of blow comes round in each four (a loaded machine may manage only a few rounds);
    # the victim and the timing are random
    kinds = ["sigkill", "redis", "sigterm", "sigkill"]
    started, actions = time.monotonic(), []
    while time.monotonic() - started < CHAOS_SECONDS or len(actions) < len(kinds):
        time.sleep(rng.uniform(1.0, 4.0))
        actions.append(kinds[len(actions) % len(kinds)])
        blow(actions[-1], rng.choice(daemons), redis_server, redis_down=rng.uniform(0.2, 1.5))

    jobs = a.wait_jobs(ids, timeout=600)
    assert {j: s["status"] for j, s in jobs.items()} == {j: "done" for j in ids}
    a.wait_until(lambda: a.depths() == {"pending": 0, "processing": 0, "retry": 0, "dead": 0}
                 and a.r.hlen(a.key("outbox")) == 0, 60, "nothing left in the queue or the outbox")
    replied = {json.loads(r)["id"] for r in a.r.lrange("app:chaos", 0, -1)}
    assert set(ids) - replied == set(), f"replies never delivered: {sorted(set(ids) - replied)}"
    for job_id in ids:
        clip = tmp_path / "clips" / "clips" / job_id / "c.mp4"
        assert clip.is_file() and clip.stat().st_size > 0, clip
    for job_id in rng.sample(ids, 25):  # a sample through ffprobe: real one-second clips
        duration = float(ffprobe(tmp_path / "clips" / "clips" / job_id / "c.mp4")["format"]["duration"])
        assert 0.5 <= duration <= 3.1, (job_id, duration)
