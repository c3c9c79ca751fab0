"""redis.wait_replicas: each transition WAITs on its own connection, a short count is reported
and the transition stands, and a server that forgot the scripts (a new master after a
failover) gets them again (real Redis; the failovers themselves are in test_topologies)."""

from __future__ import annotations

import threading

import pytest
from services import RedisServer, free_port, wait_for

from clipper.connections import WaitFailed, WaitForReplicas, redis_trouble, replica_shortfall
from clipper.jobs.spec import job_id_for_raw
from clipper.queue import ReliableQueue, lua_source

Q = "t:{q}"


def test_a_transition_fewer_replicas_took_stands_and_is_reported(redis) -> None:
    short: list[tuple[str, int]] = []
    q = ReliableQueue(redis, Q, "c1", job_id_of=job_id_for_raw, result_ttl=60, wait=WaitForReplicas(1, 0.05),
                      on_short_wait=lambda key, acked: short.append((key, acked)))
    q.push(b"m")
    q.claim(0.1)
    redis.script_flush()  # as on a freshly promoted master: no script cached
    reply = q.ack(b"m", "j", {"id": "j", "status": "done"}, reply_to="app:r")
    assert redis.hget(f"{Q}:job:j", "status") == b"done" and redis.llen(f"{Q}:processing:c1") == 0
    assert q.outbox.deliver(reply) and redis.llen("app:r") == 1
    # this Redis has no replica: both the ack and the reply's LPUSH came back short, and said so
    assert short == [(f"{Q}:processing:c1", 0), ("app:r", 0)]


def test_a_master_without_enough_replicas_is_named_at_start(redis) -> None:
    assert replica_shortfall(redis, Q, 0) is None
    assert "redis.wait_replicas = 1, but the master has 0 connected replica(s)" in replica_shortfall(redis, Q, 1)


def test_a_master_demoted_while_it_waits_is_redis_trouble(tmp_path) -> None:
    """What SENTINEL FAILOVER does to a daemon mid-WAIT: the old master turns replica and
    unblocks the WAIT (UNBLOCKED). The write may be gone with it, so the outcome must stay with
    the daemon (Redis trouble), not be taken for an error about the item (which would bury it)."""
    server = RedisServer(tmp_path / "master").start()
    try:
        client = server.client()
        q = ReliableQueue(client, Q, "c1", job_id_of=job_id_for_raw, result_ttl=60, wait=WaitForReplicas(1, 60))
        client.script_load(lua_source("ack"))  # known, as on a master that has run for a while
        q.push(b"m")
        q.claim(0.1)
        admin = server.client(decode_responses=True)

        def demote_once_waiting() -> None:
            wait_for(lambda: "cmd=wait" in admin.execute_command("CLIENT", "LIST"), 20, "the ack's WAIT")
            admin.replicaof("127.0.0.1", free_port())  # a master nobody runs: it stays a replica

        demoter = threading.Thread(target=demote_once_waiting)
        demoter.start()
        with pytest.raises(WaitFailed, match="UNBLOCKED") as caught:
            q.ack(b"m", "j", {"id": "j", "status": "done"})
        demoter.join()
        assert redis_trouble(caught.value)
    finally:
        server.stop()
