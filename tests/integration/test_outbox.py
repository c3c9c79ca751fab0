"""Replies survive a crash: the outcome and its reply are recorded in one script (the reply in
Q:outbox), delivered to reply_to afterwards and removed only then. A daemon killed in between
is replaced by its own restart or by any live daemon (real Redis, real daemons, SIGKILL)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from clipper.jobs.spec import job_id_for_raw
from clipper.queue import ReliableQueue

if TYPE_CHECKING:
    from conftest import ClipperHarness

Q = "t:{q}"


def queue(redis, consumer: str) -> ReliableQueue:
    return ReliableQueue(redis, Q, consumer, job_id_of=job_id_for_raw, result_ttl=60)


def test_the_outbox_names_who_delivers_what(redis) -> None:
    mine, other = queue(redis, "c1"), queue(redis, "c2")
    for q, raw in ((mine, b"a"), (other, b"b")):
        q.push(raw)
        q.claim(0.1)
    reply_a = mine.ack(b"a", "ja", {"id": "ja", "status": "done"}, reply_to="app:r")
    reply_b = other.ack(b"b", "jb", {"id": "jb", "status": "done"}, reply_to="app:r")
    other.heartbeat(10, {})
    assert mine.outbox.left_by_me() == [reply_a]
    assert mine.outbox.left_by_the_dead() == []  # c2 is alive: its reply is its own to deliver
    redis.delete(f"{Q}:consumer:c2")
    assert mine.outbox.left_by_the_dead() == [reply_b]
    assert mine.outbox.deliver(reply_b) and mine.outbox.deliver(reply_a)
    assert sorted(json.loads(r)["id"] for r in redis.lrange("app:r", 0, -1)) == ["ja", "jb"]
    assert redis.hlen(f"{Q}:outbox") == 0


def test_a_newer_reply_for_the_same_job_is_not_removed_by_an_older_delivery(redis) -> None:
    q = queue(redis, "c1")
    for raw in (b"first", b"second"):  # the same job done twice (redelivered)
        q.push(raw)
        q.claim(0.1)
    old = q.ack(b"first", "j", {"id": "j", "status": "done", "n": 1}, reply_to="app:r")
    new = q.ack(b"second", "j", {"id": "j", "status": "done", "n": 2}, reply_to="app:r")
    assert old.field == new.field and old.entry != new.entry
    q.outbox.deliver(old)
    assert q.outbox.left_by_me() == [new]


@pytest.mark.parametrize("replacement", ["its own restart", "a second daemon"])
def test_a_reply_recorded_before_sigkill_is_delivered(clipper_factory, http, replacement: str) -> None:
    """The daemon is killed after the outcome is recorded and before the reply is pushed: the
    reply waits in the outbox until its replacement delivers it."""
    a: ClipperHarness = clipper_factory(**{"testing.pause_before_reply": 600, "redis.heartbeat_ttl": 2})
    a.start()
    a.push({"id": "r1", "source": http.url("/media/short.mp4"), "clips": [{"name": "c", "start": 0, "end": 1}],
            "thumbnails": [], "reply_to": "app:results"})
    assert a.wait_job("r1")["status"] == "done"
    assert a.r.hlen(a.key("outbox")) == 1 and a.r.llen("app:results") == 0
    b = a if replacement == "its own restart" else clipper_factory(**{"redis.heartbeat_ttl": 2})
    if b is not a:
        b.start()  # running while `a` is alive: a's reply is a's to deliver, until a dies
    a.kill9()
    if b is a:
        a.configure(**{"testing.pause_before_reply": None})
        a.start()
    popped = a.r.brpop("app:results", timeout=30)
    assert popped is not None, f"no reply after {replacement} took over\n{b.diagnostics()}"
    reply = json.loads(popped[1])
    assert reply["id"] == "r1" and reply["status"] == "done"
    a.wait_until(lambda: a.r.hlen(a.key("outbox")) == 0, 10, "the delivered reply gone from the outbox")
    recovered = [e for e in b.log_events() if e.get("event") == "job.reply_recovered"]
    assert [e["job_id"] for e in recovered] == ["r1"], recovered
