"""clipper on the Redis it meets in production: a Sentinel-managed master and a Redis Cluster,
real servers started once per session (tests/redis_topologies.py). Failovers happen while
jobs flow; with redis.wait_replicas on, every job finishes, none is dead, every reply arrives
and the daemon never exits. The command line works against both topologies too."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from redis.cluster import key_slot

if TYPE_CHECKING:
    from conftest import ClipperHarness

from test_e2e import assert_clip, job_message

REPLY_TO = "app:results"
LOAD = 6  # short copy-mode jobs: enough to be mid-flow when the master changes


def push_load(clipper: ClipperHarness, http, prefix: str, n: int = LOAD) -> list[str]:
    ids = [f"{prefix}{i}" for i in range(n)]
    for job_id in ids:
        clipper.push({"id": job_id, "source": http.url("/media/short.mp4"), "reply_to": REPLY_TO,
                      "clips": [{"name": "c", "start": 0, "end": 1, "mode": "copy"}], "thumbnails": []})
    return ids


def replies(clipper: ClipperHarness) -> dict[str, dict[str, Any]]:
    """Every reply delivered to REPLY_TO, by job id (a job may be answered more than once)."""
    return {json.loads(r)["id"]: json.loads(r) for r in clipper.r.lrange(REPLY_TO, 0, -1)}


def assert_all_done(clipper: ClipperHarness, ids: list[str], pid: int) -> None:
    jobs = clipper.wait_jobs(ids, timeout=120)
    assert {j: s["status"] for j, s in jobs.items()} == {j: "done" for j in ids}
    clipper.wait_until(lambda: set(ids) <= set(replies(clipper)), 30, "every reply on reply_to")
    assert all(replies(clipper)[j]["status"] == "done" for j in ids)
    clipper.wait_until(lambda: clipper.depths() == {"pending": 0, "processing": 0, "retry": 0, "dead": 0}, 30,
                       "an empty queue (nothing pending, held, retrying or dead)")
    assert clipper.running_pid() == pid, "the daemon exited"
    for job_id in ids:
        assert clipper.output_path(f"clips/{job_id}/c.mp4").is_file()


def flowing(clipper: ClipperHarness, ids: list[str], done: int) -> None:
    clipper.wait_until(lambda: sum(clipper.job(j).get("status") == "done" for j in ids) >= done, 60,
                       f"{done} jobs done")


# -- Sentinel ------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["sentinel-failover", "master-sigkill"])
def test_sentinel_failover_under_load_loses_nothing(sentinel_clipper_factory, sentinel_set, http, how: str) -> None:
    clipper: ClipperHarness = sentinel_clipper_factory(**{"redis.wait_replicas": 1, "redis.wait_timeout": 2})
    pid = clipper.start()
    ids = push_load(clipper, http, "s")
    flowing(clipper, ids, 2)
    if how == "sentinel-failover":
        sentinel_set.failover()
    else:
        old = sentinel_set.master()
        old.kill9()
        sentinel_set.wait_new_master(old.port)
        # back as a replica of the new master, as an operator would bring it: until then every
        # transition waits redis.wait_timeout for a replica that is not there
    # the old master back as a replica of the new one, as an operator would bring it (or, after
    # SENTINEL FAILOVER, as Sentinel does within 10 s): until then every transition waits
    # redis.wait_timeout for a replica that is not there
    sentinel_set.restore()
    assert_all_done(clipper, ids, pid)
    events = {e["event"] for e in clipper.log_events()}
    assert "redis.unavailable" in events and "redis.back" in events, "the daemon never lost its master?"
    if how == "sentinel-failover":
        cli_round_trip(clipper, http)  # the command line finds the new master through the Sentinels too


# -- Cluster -------------------------------------------------------------------------------------

def test_cluster_e2e_and_failover_of_the_queue_slot(cluster_clipper_factory, cluster_set, http) -> None:
    clipper: ClipperHarness = cluster_clipper_factory(**{"redis.wait_replicas": 1, "redis.wait_timeout": 2})
    assert key_slot(REPLY_TO.encode()) != key_slot(clipper.queue.encode()), "reply_to must be in another slot"
    events = clipper.r.pubsub()  # PUBLISH from a script reaches subscribers on any node
    events.subscribe(clipper.key("events"))
    pid = clipper.start()
    clipper.push(job_message(http))
    assert clipper.wait_job("j1")["status"] == "done"
    assert_clip(clipper.output_path("clips/j1/a.mp4"), 10)
    assert replies(clipper)["j1"]["status"] == "done"
    statuses: list[str] = []  # claim, progress reports (about one a second), then the result
    while "done" not in statuses and len(statuses) < 100:
        message = events.get_message(timeout=1)
        if message is None:
            break
        if message["type"] == "message":
            statuses.append(json.loads(message["data"])["status"])
    assert "running" in statuses and "done" in statuses, statuses
    events.close()

    ids = push_load(clipper, http, "c")
    flowing(clipper, ids, 2)
    cluster_set.failover(clipper.queue)
    assert_all_done(clipper, ids, pid)
    cli_round_trip(clipper, http)


def cli_round_trip(clipper: ClipperHarness, http) -> None:
    """`enqueue`, `stats` and `dead list/retry/purge` through the real command line, with the
    daemon running (and the queue empty)."""
    message = json.dumps({"id": "bad", "source": http.url("/404/x.mp4")})
    r = clipper.cli("enqueue", "test", message)
    assert r.returncode == 0 and r.stdout.strip() == "bad", r.stderr
    assert clipper.wait_job("bad")["status"] == "failed"
    r = clipper.cli("dead", "test", "list", "--json")
    assert r.returncode == 0 and [json.loads(line)["id"] for line in r.stdout.splitlines()] == ["bad"], r.stderr
    stats = json.loads(clipper.cli("stats", "test", "--json").stdout)
    assert stats["dead"] == 1 and stats["pending"] == 0 and len(stats["consumers"]) == 1
    r = clipper.cli("dead", "test", "retry", "bad")
    assert r.returncode == 0 and "requeued 1" in r.stdout, r.stderr
    assert clipper.wait_job("bad", ["failed"]).get("attempts") == "1", "not taken again after dead retry"
    clipper.wait_until(lambda: len(clipper.dead()) == 1, 30, "the message dead again")
    r = clipper.cli("dead", "test", "purge")
    assert r.returncode == 0 and "purged 1" in r.stdout and clipper.dead() == []
