"""Every transition of the reliable queue leaves an item in exactly one place (real Redis)."""

import json
import time

import pytest

from clipper.jobs.spec import job_id_for_raw
from clipper.queue import ReliableQueue

Q = "t:{q}"


def places(r, raw: bytes, consumers=("c1", "c2")) -> list[str]:
    found = []
    found += ["Q"] * r.lrange(Q, 0, -1).count(raw)
    for c in consumers:
        found += [f"processing:{c}"] * r.lrange(f"{Q}:processing:{c}", 0, -1).count(raw)
    found += ["retry"] * sum(1 for m in r.zrange(f"{Q}:retry", 0, -1) if m[9:] == raw)
    found += ["dead"] * sum(1 for e in r.lrange(f"{Q}:dead", 0, -1) if json.loads(e)["raw"].encode() == raw)
    return found


@pytest.fixture
def q(redis):
    return ReliableQueue(redis, Q, "c1", job_id_of=job_id_for_raw, result_ttl=60)


def test_claim_moves_oldest_to_processing(q, redis) -> None:
    q.push(b"first")
    q.push(b"second")
    assert q.claim(timeout=0.1) == b"first"
    assert places(redis, b"first") == ["processing:c1"]
    assert places(redis, b"second") == ["Q"]


def test_claim_times_out_empty(q) -> None:
    t0 = time.monotonic()
    assert q.claim(timeout=0.2) is None
    assert time.monotonic() - t0 < 1.5


def test_mark_claimed_counts_attempts_and_resets_after_finish(q, redis) -> None:
    assert q.mark_claimed("j") == (1, False)
    assert q.mark_claimed("j") == (2, False)  # e.g. after a crash
    q.push(b"x")
    q.claim(0.1)
    q.ack(b"x", "j", {"id": "j", "status": "done"})
    assert q.mark_claimed("j") == (1, False)  # a new submission of a finished job starts afresh
    redis.hset(f"{Q}:job:j", "cancel_requested", 1)
    assert q.mark_claimed("j") == (2, True)  # cancelled while on its way: finished at once


def test_claim_takes_high_first_even_pushed_to_q(q, redis) -> None:
    high = json.dumps({"source": "http://x/v", "priority": "high"}).encode()
    lane = json.dumps({"source": "http://x/w", "priority": "high"}).encode()
    for raw in (b"n1", b"n2", high, b'{"priority": "normal"}', b"n3"):
        q.push(raw)
    redis.lpush(f"{Q}:high", lane)
    assert q.claim(0.1) == lane  # the lane first, then the high one pushed to Q, then Q in order
    assert q.claim(0.1) == high
    assert [q.claim(0.1) for _ in range(4)] == [b"n1", b"n2", b'{"priority": "normal"}', b"n3"]
    assert places(redis, high) == ["processing:c1"] and redis.llen(f"{Q}:high") == 0


def test_trim_dead_keeps_the_newest_and_counts_the_dropped(q, redis) -> None:
    now = time.time()
    for i, age in enumerate((100, 90, 80, 5, 4, 3)):  # LPUSHed oldest first, as bury does
        redis.lpush(f"{Q}:dead", json.dumps({"raw": f"m{i}", "id": f"j{i}", "failed_at": now - age}))
    assert q.trim_dead(max_entries=5, max_age=0) == 1
    assert q.trim_dead(max_entries=5, max_age=50) == 2
    assert [json.loads(e)["id"] for e in redis.lrange(f"{Q}:dead", 0, -1)] == ["j5", "j4", "j3"]
    assert q.trim_dead(max_entries=0, max_age=0) == 0
    assert q.stats()["dead_dropped"] == 3
    assert json.loads(q.dead_entry("j4"))["raw"] == "m4" and q.dead_entry("j0") is None


def test_ack_records_result_reply_and_event(q, redis) -> None:
    q.push(b"m")
    q.claim(0.1)
    sub = redis.pubsub()
    sub.subscribe(f"{Q}:events")
    sub.get_message(timeout=1)
    reply = q.ack(b"m", "j1", {"id": "j1", "status": "done", "outputs": []}, reply_to="app:results")
    assert places(redis, b"m") == []
    assert redis.hget(f"{Q}:outbox", "j1|app:results") == reply.entry.encode()  # recorded with the outcome
    assert q.outbox.deliver(reply) and redis.hlen(f"{Q}:outbox") == 0
    job = redis.hgetall(f"{Q}:job:j1")
    assert job[b"status"] == b"done"
    assert json.loads(job[b"result"])["id"] == "j1"
    assert 0 < redis.ttl(f"{Q}:job:j1") <= 60
    assert json.loads(redis.rpop("app:results"))["status"] == "done"
    event = sub.get_message(timeout=1)
    # the event is the whole result (DESIGN: the result is published on Q:events)
    assert event and json.loads(event["data"]) == {"id": "j1", "status": "done", "outputs": [], "at": pytest.approx(time.time(), abs=5)}


def test_reply_to_of_another_type_is_skipped_and_nothing_is_half_done(q, redis) -> None:
    redis.set("not-a-list", "x")
    sub = redis.pubsub()
    sub.subscribe(f"{Q}:events")
    sub.get_message(timeout=1)
    for raw in (b"ok", b"bad"):
        q.push(raw)
        q.claim(0.1)
    assert q.outbox.deliver(q.ack(b"ok", "j1", {"id": "j1", "status": "done"}, reply_to="not-a-list")) is False
    assert q.outbox.deliver(q.bury(b"bad", "j2", {"kind": "permanent", "message": "m"}, 1,
                                   {"id": "j2", "status": "failed"}, reply_to="not-a-list")) is False
    assert redis.hlen(f"{Q}:outbox") == 0  # an undeliverable reply does not wait forever
    assert places(redis, b"ok") == [] and places(redis, b"bad") == ["dead"]
    assert redis.hget(f"{Q}:job:j1", "status") == b"done" and redis.hget(f"{Q}:job:j2", "status") == b"failed"
    assert redis.get("not-a-list") == b"x"
    assert [json.loads(sub.get_message(timeout=1)["data"])["id"] for _ in range(2)] == ["j1", "j2"]


def test_bury_as_is_dead_letters_without_the_job_record(q, redis) -> None:
    redis.set(f"{Q}:job:j", "a string where a hash should be")
    q.push(b"m")
    q.claim(0.1)
    assert q.bury_as_is(b"m", "j", "cannot record", 2)
    assert places(redis, b"m") == ["dead"]
    entry = json.loads(redis.lindex(f"{Q}:dead", 0))
    assert entry["id"] == "j" and entry["error"] == {"kind": "permanent", "message": "cannot record"}


def test_orphans_are_items_held_by_no_worker(q, redis) -> None:
    for raw in (b"a", b"a", b"b"):
        q.push(raw)
        q.claim(0.1)
    assert sorted(q.orphans([b"a", b"b"])) == [b"a"]
    assert q.orphans([b"a", b"a", b"b"]) == []


def test_retry_later_then_promote_when_due(q, redis) -> None:
    q.push(b"m")
    q.claim(0.1)
    assert q.retry_later(b"m", "j", 0.2, "503")
    assert places(redis, b"m") == ["retry"]
    assert redis.hget(f"{Q}:job:j", "status") == b"retrying"
    assert q.promote_due() == []
    time.sleep(0.3)
    assert q.promote_due() == [job_id_for_raw(b"m")]
    assert places(redis, b"m") == ["Q"]
    assert redis.hget(f"{Q}:job:{job_id_for_raw(b'm')}", "status") == b"queued"


def test_identical_items_stay_two_items_in_retry(q, redis) -> None:
    for _ in range(2):
        q.push(b"same")
        q.claim(0.1)
    q.retry_later(b"same", "j", 0, "x")
    q.retry_later(b"same", "j", 0, "x")
    assert places(redis, b"same") == ["retry", "retry"]
    assert len(q.promote_due()) == 2
    assert places(redis, b"same") == ["Q", "Q"]


def test_bury_dead_letter_has_reason(q, redis) -> None:
    q.push(b"bad")
    q.claim(0.1)
    assert q.outbox.deliver(q.bury(b"bad", "j", {"kind": "permanent", "message": "404"}, 1,
                                   {"id": "j", "status": "failed"}, "r"))
    assert places(redis, b"bad") == ["dead"]
    entry = json.loads(redis.lindex(f"{Q}:dead", 0))
    assert entry["id"] == "j" and entry["error"]["message"] == "404" and entry["attempts"] == 1 and entry["failed_at"]
    assert redis.hget(f"{Q}:job:j", "status") == b"failed"
    assert json.loads(redis.rpop("r"))["status"] == "failed"


def test_requeue_goes_to_consuming_end_and_uncounts(q, redis) -> None:
    q.push(b"older")
    q.push(b"newer")
    assert q.claim(0.1) == b"older"
    q.mark_claimed("j")
    assert q.requeue(b"older", "j")
    assert q.claim(0.1) == b"older"  # next in line again
    assert redis.hget(f"{Q}:job:j", "attempts") == b"0"


def test_reap_only_dead_consumers(redis) -> None:
    alive = ReliableQueue(redis, Q, "c1", job_id_of=job_id_for_raw)
    dead = ReliableQueue(redis, Q, "c2", job_id_of=job_id_for_raw)
    for c in (alive, dead):
        c.heartbeat(0.3, {})
    for raw in (b"a1", b"d1", b"d2"):
        redis.lpush(Q, raw)
    alive.claim(0.1)
    dead.claim(0.1)
    dead.claim(0.1)
    assert alive.reap() == {}  # c2's heartbeat is still fresh
    time.sleep(0.4)
    alive.heartbeat(5, {})
    assert alive.reap() == {"c2": [job_id_for_raw(b"d2"), job_id_for_raw(b"d1")]}
    assert redis.hget(f"{Q}:job:{job_id_for_raw(b'd1')}", "status") == b"queued"
    assert places(redis, b"d1") == ["Q"] and places(redis, b"d2") == ["Q"]
    assert places(redis, b"a1") == ["processing:c1"]
    assert alive.claim(0.1) == b"d1"  # the oldest of the reaped items is consumed first
    assert redis.smembers(f"{Q}:consumers") == {b"c1"}


def test_recover_own_ignores_heartbeat(q, redis) -> None:
    q.heartbeat(30, {})
    q.push(b"left")
    q.claim(0.1)
    assert q.recover_own() == [job_id_for_raw(b"left")]
    assert places(redis, b"left") == ["Q"]


def test_dead_retry_and_purge(q, redis) -> None:
    for raw, jid in ((b"x", "jx"), (b"y", "jy")):
        q.push(raw)
        q.claim(0.1)
        q.mark_claimed(jid)
        q.bury(raw, jid, {"kind": "permanent", "message": "m"}, 1, {})
    assert q.dead_retry(["jx"]) == 1
    assert places(redis, b"x") == ["Q"] and places(redis, b"y") == ["dead"]
    assert redis.hget(f"{Q}:job:jx", "attempts") == b"0"
    assert q.dead_purge() == 1
    assert places(redis, b"y") == []


def test_stats(q, redis) -> None:
    q.heartbeat(30, {"pid": 1, "workers": 2, "in_flight": 1, "jobs": ["j"]})
    q.push(b"a")
    q.push(b"b")
    q.claim(0.1)
    s = q.stats()
    assert (s["pending"], s["processing"], s["retry"], s["dead"]) == (1, 1, 0, 0)
    assert s["consumers"][0]["consumer"] == "c1" and s["in_flight"] == {"c1": 1}


def test_a_job_record_of_another_type_leaves_the_item_in_place(q, redis) -> None:
    from clipper.queue import JobRecordError

    redis.set(f"{Q}:job:j", "not a hash")
    q.push(b"m")
    q.claim(0.1)
    for move in (lambda: q.ack(b"m", "j", {"id": "j", "status": "done"}),
                 lambda: q.bury(b"m", "j", {"kind": "permanent", "message": "x"}, 1, {"id": "j"}),
                 lambda: q.retry_later(b"m", "j", 1, "x"),
                 lambda: q.requeue(b"m", "j")):
        with pytest.raises(JobRecordError, match="not a job record"):
            move()
        assert places(redis, b"m") == ["processing:c1"]  # nothing half done
    assert q.bury_as_is(b"m", "j", "cannot record", 1)
    assert places(redis, b"m") == ["dead"]


def test_claim_count_and_dead_retry_also_refuse_a_record_of_another_type(q, redis) -> None:
    from clipper.queue import JobRecordError

    redis.set(f"{Q}:job:j", "not a hash")
    with pytest.raises(JobRecordError, match="not a job record"):
        q.mark_claimed("j")
    q.push(b"m")
    q.claim(0.1)
    q.bury_as_is(b"m", "j", "cannot record", 1)
    assert q.dead_retry() == 0
    assert places(redis, b"m") == ["dead"] and redis.get(f"{Q}:job:j") == b"not a hash"


def test_every_script_that_writes_a_job_record_starts_with_the_one_type_check() -> None:
    from clipper.keys import lua_source

    prelude = lua_source("job_record")
    as_is = lua_source("bury_as_is")  # writes no job record, but moves an item into Q:dead
    assert as_is.startswith(prelude) and "job_record_ok(KEYS[" not in as_is[len(prelude):] and "holds(KEYS[2]" in as_is
    for name in ("mark_claimed", "ack", "retry_later", "bury", "requeue", "promote", "reap", "dead_retry"):
        source = lua_source(name)
        assert source.startswith(prelude) and "job_record_ok(KEYS[" in source[len(prelude):], name


# -- keys of another type planted under Q: by someone else -----------------------------------------

def test_a_squatted_destination_leaves_the_item_where_it_was(q, redis) -> None:
    from clipper.queue import ForeignKeyError

    q.push(b"m")
    q.claim(0.1)
    redis.delete(Q)
    for key, move in ((f"{Q}:dead", lambda: q.bury(b"m", "j", {"kind": "permanent", "message": "x"}, 1, {"id": "j"})),
                      (f"{Q}:dead", lambda: q.bury_as_is(b"m", "j", "x", 1)),
                      (f"{Q}:retry", lambda: q.retry_later(b"m", "j", 1, "x")),
                      (Q, lambda: q.requeue(b"m", "j"))):
        redis.set(key, "planted")
        with pytest.raises(ForeignKeyError, match=f"{key} holds another type"):
            move()
        assert redis.lrange(f"{Q}:processing:c1", 0, -1) == [b"m"]  # nothing lost, nothing half done
        redis.delete(key)
    assert q.foreign.untold() == [f"{Q}:dead holds a string, not a list: items cannot move into it",
                                  f"{Q}:retry holds a string, not a zset: items cannot move into it",
                                  f"{Q} holds a string, not a list: items cannot move into it"]
    assert q.foreign.untold() == []  # each is told once


def test_heartbeat_reaper_and_stats_get_past_squatters(q, redis) -> None:
    redis.set(f"{Q}:consumers", "planted")
    q.heartbeat(10, {"pid": 1})
    assert redis.type(f"{Q}:consumer:c1") == b"string"  # the heartbeat itself still beats
    assert q.reap() == {}
    assert q.foreign.untold() == [f"{Q}:consumers holds a string, not a set: consumers cannot be listed, so none "
                                  "can be reaped"]
    redis.delete(f"{Q}:consumers")
    redis.sadd(f"{Q}:consumers", "ghost", "squatted")
    redis.rpush(f"{Q}:consumer:ghost", "planted")  # a list where ghost's heartbeat would be
    redis.rpush(f"{Q}:processing:ghost", b"held")
    redis.hset(f"{Q}:processing:squatted", "x", "y")  # a hash where a processing list would be
    assert q.reap() == {"ghost": [job_id_for_raw(b"held")]}
    assert places(redis, b"held") == ["Q"]
    redis.set(f"{Q}:retry", "planted")
    assert sorted(q.foreign.untold()) == [
        f"{Q}:consumer:ghost holds a list, not a string (a heartbeat): consumer ghost counts as dead",
        f"{Q}:processing:squatted holds a hash, not a list: the items of consumer squatted cannot be reaped"]
    assert q.promote_due() == []
    stats = q.stats()
    assert (stats["pending"], stats["retry"], stats["in_flight"]) == (1, 0, {})
    assert sorted(stats["foreign"]) == [f"{Q}:processing:squatted holds a hash, not a list: counted as empty",
                                        f"{Q}:retry holds a string, not a zset: counted as empty"]
