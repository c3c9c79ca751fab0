"""The reliable Redis queue: every state change of an item is one atomic operation.

An item (the raw message bytes, exactly as the producer pushed them) is at every instant in
exactly one of: `Q` (pending), `Q:processing:<consumer>` (held by a daemon), `Q:retry`
(waiting for its next attempt), `Q:dead` (dead letters), or it has been acknowledged after
its result was recorded. Moves are BLMOVE or one Lua script each, so a crash between two
commands can never leave an item in two places or in none.

This module knows Redis keys and transitions; it knows nothing about ffmpeg or media.
"""

from __future__ import annotations

import collections
import json
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from redis.commands.core import Script

from clipper.connections import RedisClient, WaitForReplicas
from clipper.outbox import Outbox, Reply

# Retry members carry a random 8-hex prefix: a sorted set keeps one copy of equal members,
# and two identical messages waiting at once must stay two items.
_RETRY_NONCE_LEN = 9  # "xxxxxxxx|"

_MARK_CLAIMED = """
-- KEYS: job. ARGV: now. Counts the attempt at claim time, so a message that kills
-- the daemon every time is still counted (and buried after retry.max_attempts).
-- A finished record (done/failed) means this is a new submission of the same message.
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'done' or status == 'failed' then redis.call('HDEL', KEYS[1], 'attempts', 'result', 'finished_at') end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1], 'updated_at', ARGV[1], 'progress', 'claimed')
redis.call('HSETNX', KEYS[1], 'created_at', ARGV[1])
redis.call('PERSIST', KEYS[1])
return attempts
"""

# Every script that writes a job record checks its type before it writes anything: Lua does not
# roll back, so an error halfway (WRONGTYPE on a key someone else wrote) could leave an item
# moved without its record, or in no place at all. Such an item is left where it was (-1) and
# the caller dead-letters it as it is (bury_as_is).
_JOB_OK = """
local jt = redis.call('TYPE', KEYS[JOB])['ok']
if jt ~= 'hash' and jt ~= 'none' then return -1 end
"""

# ack and bury record the reply in the outbox with the outcome (see outbox.py); an empty
# reply field means the message asked for none.
_RECORD_REPLY = """
if ARGV[REPLY] ~= '' then redis.call('HSET', KEYS[OUTBOX], ARGV[REPLY], ARGV[REPLY + 1]) end
"""

_ACK = """
-- KEYS: processing, job, events, outbox. ARGV: raw, status, result, now, ttl, event, reply field, reply entry
""" + _JOB_OK.replace("JOB", "2") + """
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('HSET', KEYS[2], 'status', ARGV[2], 'result', ARGV[3], 'finished_at', ARGV[4], 'updated_at', ARGV[4],
           'progress', ARGV[2])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
""" + _RECORD_REPLY.replace("OUTBOX", "4").replace("REPLY", "7") + """
redis.call('PUBLISH', KEYS[3], ARGV[6])
return removed
"""

_RETRY_LATER = """
-- KEYS: processing, retry, job, events. ARGV: raw, member, due, now, event, error, uncount
-- uncount: the failure was not the message's (the output was down), so no attempt is used up.
""" + _JOB_OK.replace("JOB", "3") + """
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
if removed == 0 then return 0 end
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), ARGV[2])
if ARGV[7] == '1' and tonumber(redis.call('HGET', KEYS[3], 'attempts') or '0') > 0 then
  redis.call('HINCRBY', KEYS[3], 'attempts', -1)
end
redis.call('HSET', KEYS[3], 'status', 'retrying', 'due_at', ARGV[3], 'updated_at', ARGV[4], 'last_error', ARGV[6])
redis.call('PUBLISH', KEYS[4], ARGV[5])
return 1
"""

_BURY = """
-- KEYS: processing, dead, job, events, outbox. ARGV: raw, dead_entry, result, now, ttl, event, reply field, reply entry
""" + _JOB_OK.replace("JOB", "3") + """
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
if removed == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], 'status', 'failed', 'result', ARGV[3], 'finished_at', ARGV[4], 'updated_at', ARGV[4],
           'progress', 'failed')
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[5]))
""" + _RECORD_REPLY.replace("OUTBOX", "5").replace("REPLY", "7") + """
redis.call('PUBLISH', KEYS[4], ARGV[6])
return 1
"""

_BURY_AS_IS = """
-- KEYS: processing, dead. ARGV: raw, dead_entry. The last resort when the job's own keys
-- cannot be written (e.g. another type under Q:job:<id>): the item still ends up dead.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1
"""

_REQUEUE = """
-- KEYS: processing, queue, job, events. ARGV: raw, now, event, uncount
-- Back to the consuming end of Q (it was next in line). An attempt cut short by our own
-- shutdown is not the message's fault, so it is not counted.
""" + _JOB_OK.replace("JOB", "3") + """
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
if removed == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
if ARGV[4] == '1' and tonumber(redis.call('HGET', KEYS[3], 'attempts') or '0') > 0 then
  redis.call('HINCRBY', KEYS[3], 'attempts', -1)
end
redis.call('HSET', KEYS[3], 'status', 'queued', 'updated_at', ARGV[2], 'progress', 'requeued')
redis.call('PUBLISH', KEYS[4], ARGV[3])
return 1
"""

_PROMOTE = """
-- KEYS: retry, queue, events, job_1..job_n. ARGV: now, n, then member_i, event_i for each i.
-- Due retries go to the consuming end of Q and their records say so. Python read the due
-- members (to name their jobs); one another daemon promoted meanwhile is skipped.
local n = tonumber(ARGV[2])
local moved = {}
for i = 1, n do
  local member, event = ARGV[1 + 2 * i], ARGV[2 + 2 * i]
  if redis.call('ZREM', KEYS[1], member) == 1 then
    redis.call('RPUSH', KEYS[2], string.sub(member, 10))
    local jt = redis.call('TYPE', KEYS[3 + i])['ok']
    if jt == 'hash' or jt == 'none' then
      redis.call('HSET', KEYS[3 + i], 'status', 'queued', 'updated_at', ARGV[1], 'progress', 'retry due')
    end
    redis.call('PUBLISH', KEYS[3], event)
    moved[#moved + 1] = i
  end
end
return moved
"""

_REAP = """
-- KEYS: processing, queue, heartbeat, consumers, events, job_1..job_n.
-- ARGV: consumer, force, now, reason, n, then raw_i, event_i for each i (the list as Python read it).
-- Moves a consumer's items back to the consuming end of Q, oldest consumed first, unless its
-- heartbeat is alive (force: our own leftovers, we hold the pid lock).
if ARGV[2] ~= '1' and redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local n = tonumber(ARGV[5])
local moved = {}
for i = 1, n do
  local raw, event = ARGV[4 + 2 * i], ARGV[5 + 2 * i]
  if redis.call('LREM', KEYS[1], 1, raw) == 1 then
    redis.call('RPUSH', KEYS[2], raw)
    local jt = redis.call('TYPE', KEYS[5 + i])['ok']
    if jt == 'hash' or jt == 'none' then
      redis.call('HSET', KEYS[5 + i], 'status', 'queued', 'updated_at', ARGV[3], 'progress', ARGV[4])
    end
    redis.call('PUBLISH', KEYS[5], event)
    moved[#moved + 1] = i
  end
end
-- anything not in the list Python read (it cannot grow for a dead consumer; belt and braces)
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do moved[#moved + 1] = 0 end
if ARGV[2] ~= '1' then redis.call('SREM', KEYS[4], ARGV[1]) end
return moved
"""

_DEAD_RETRY = """
-- KEYS: dead, queue, job. ARGV: entry, raw, now. Moves one dead letter back to Q with a
-- fresh attempt count (an operator decided it deserves another round).
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
if removed == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], 'status', 'queued', 'attempts', 0, 'updated_at', ARGV[3], 'progress', 'requeued from dead')
return 1
"""


class JobRecordError(redis.ResponseError):
    """A job's record key (Q:job:<id>) holds another type: nothing was written, the item stays
    where it was, and the caller dead-letters it as it is."""


def default_consumer_id(pid_file: str) -> str:
    """Stable for one host and pid file: a daemon restarted after a crash holds the pid lock,
    so nobody else uses this id, and it can take its own leftovers back at once."""
    import hashlib

    digest = hashlib.sha1(os.path.realpath(pid_file).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}-{digest}"


def backoff_delay(attempt: int, base: float, maximum: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter in its upper half: base * 2**(attempt-1), capped,
    then a random point between half of it and all of it (spreads a thundering herd)."""
    rng = rng or random
    ceiling = min(maximum, base * (2 ** min(max(0, attempt - 1), 60)))  # no float overflow, however long
    return ceiling / 2 + rng.random() * ceiling / 2


@dataclass(frozen=True)
class Keys:
    queue: str

    @property
    def retry(self) -> str:
        return f"{self.queue}:retry"

    @property
    def dead(self) -> str:
        return f"{self.queue}:dead"

    @property
    def consumers(self) -> str:
        return f"{self.queue}:consumers"

    @property
    def events(self) -> str:
        return f"{self.queue}:events"

    @property
    def outbox(self) -> str:
        return f"{self.queue}:outbox"

    def processing(self, consumer: str) -> str:
        return f"{self.queue}:processing:{consumer}"

    def heartbeat(self, consumer: str) -> str:
        return f"{self.queue}:consumer:{consumer}"

    def job(self, job_id: str) -> str:
        return f"{self.queue}:job:{job_id}"


def _now() -> float:
    return time.time()


def _event(job_id: str, status: str, **extra: Any) -> str:
    return json.dumps({"id": job_id, "status": status, "at": round(_now(), 3), **extra}, separators=(",", ":"))


def _dead_entry(raw: bytes, job_id: str, error: dict[str, str], attempts: int, now: float) -> str:
    return json.dumps({"raw": raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw, "id": job_id,
                       "error": error, "attempts": attempts, "failed_at": round(now, 3)}, separators=(",", ":"))


def _result_event(result: dict[str, Any]) -> str:
    """A finished job's event on Q:events is its whole result (DESIGN: the result is published)."""
    return json.dumps({**result, "at": round(_now(), 3)}, separators=(",", ":"))


def _reply_args(reply: Reply | None) -> list[str]:
    return [reply.field, reply.entry] if reply else ["", ""]


class ReliableQueue:
    """Named atomic transitions over the keys derived from `redis.queue`."""

    def __init__(self, client: RedisClient, queue: str, consumer: str, *, job_id_of: Callable[[bytes], str],
                 result_ttl: int = 7 * 24 * 3600, wait: WaitForReplicas | None = None,
                 on_short_wait: Callable[[str, int], None] = lambda key, acked: None):
        """`job_id_of` names the job of a raw item (the message format is not this module's
        business); moves that find items in Redis use it to update their job records. `wait`:
        every transition waits for that many replicas (redis.wait_replicas); `on_short_wait`
        hears of a transition fewer replicas acknowledged in time (key, replicas)."""
        self.r = client
        self.wait = wait
        self.on_short_wait = on_short_wait
        self.job_id_of = job_id_of
        self.keys = Keys(queue)
        self.consumer = consumer
        self.processing = self.keys.processing(consumer)
        self.outbox = Outbox(client, self.keys.outbox, consumer, self.keys.heartbeat, wait=wait,
                             on_short_wait=on_short_wait)
        self.result_ttl = result_ttl
        self._mark_claimed = client.register_script(_MARK_CLAIMED)
        self._ack = client.register_script(_ACK)
        self._retry_later = client.register_script(_RETRY_LATER)
        self._bury = client.register_script(_BURY)
        self._requeue = client.register_script(_REQUEUE)
        self._bury_as_is = client.register_script(_BURY_AS_IS)
        self._promote = client.register_script(_PROMOTE)
        self._reap = client.register_script(_REAP)
        self._dead_retry = client.register_script(_DEAD_RETRY)

    # -- producers -------------------------------------------------------------------------
    def push(self, raw: bytes | str) -> int:
        return int(self.r.lpush(self.keys.queue, raw))

    # -- taking and finishing work -----------------------------------------------------------
    def claim(self, timeout: float = 1.0) -> bytes | None:
        """Move the oldest pending item into our processing list (blocks at most `timeout`)."""
        return self.r.blmove(self.keys.queue, self.processing, timeout, "RIGHT", "LEFT")

    def mark_claimed(self, job_id: str) -> int:
        """Count the attempt and mark the job running; returns the attempt number."""
        now = _now()
        attempts = int(self._mark_claimed(keys=[self.keys.job(job_id)], args=[now]))
        self.r.publish(self.keys.events, _event(job_id, "running", attempts=attempts))
        return attempts

    def ack(self, raw: bytes, job_id: str, result: dict[str, Any], reply_to: str | None = None) -> Reply | None:
        """Record the result (job hash, event, the reply in the outbox) and remove the item, in
        one step. Returns the reply to deliver (`outbox.deliver`), None when none was asked."""
        payload = json.dumps(result, separators=(",", ":"))
        reply = Reply.of(job_id, reply_to, payload, self.consumer) if reply_to else None
        self._checked(job_id, self._transition(self._ack, keys=[self.processing, self.keys.job(job_id), self.keys.events,
                                                                self.keys.outbox],
                                               args=[raw, result.get("status", "done"), payload, _now(), self.result_ttl,
                                                     _result_event(result), *_reply_args(reply)]))
        return reply

    def retry_later(self, raw: bytes, job_id: str, delay: float, error: str, *, uncount: bool = False) -> bool:
        """Move the item to Q:retry, due in `delay` seconds; `uncount`: the attempt is not
        counted (the failure was the output's, not the message's)."""
        due = _now() + delay
        member = f"{random.getrandbits(32):08x}|".encode() + (raw if isinstance(raw, bytes) else raw.encode())
        event = _event(job_id, "retrying", due_at=round(due, 3), error=error)
        return bool(self._checked(job_id, self._transition(
            self._retry_later, keys=[self.processing, self.keys.retry, self.keys.job(job_id), self.keys.events],
            args=[raw, member, due, _now(), event, error, "1" if uncount else "0"])))

    def bury(self, raw: bytes, job_id: str, error: dict[str, str], attempts: int, result: dict[str, Any],
             reply_to: str | None = None) -> Reply | None:
        """Dead-letter the item with the reason, record the failed result and the reply to the
        producer, in one step. Returns the reply to deliver, None when none was asked."""
        now = _now()
        entry = _dead_entry(raw, job_id, error, attempts, now)
        payload = json.dumps(result, separators=(",", ":"))
        reply = Reply.of(job_id, reply_to, payload, self.consumer) if reply_to else None
        self._checked(job_id, self._transition(
            self._bury, keys=[self.processing, self.keys.dead, self.keys.job(job_id), self.keys.events, self.keys.outbox],
            args=[raw, entry, payload, now, self.result_ttl, _result_event(result), *_reply_args(reply)]))
        return reply

    def _transition(self, script: Script, keys: list[Any], args: list[Any]) -> Any:
        """Run one transition's script; with redis.wait_replicas, also WAIT for the replicas so
        a failover cannot undo it (a short count is reported, the transition stands)."""
        if self.wait is None:
            return script(keys=keys, args=args)
        result, acked = self.wait.script(self.r, script, keys, args)
        if acked < self.wait.replicas:
            self.on_short_wait(str(keys[0]), acked)
        return result

    def _checked(self, job_id: str, outcome: Any) -> Any:
        if outcome == -1:
            raise JobRecordError(f"{self.keys.job(job_id)} holds a {self.r.type(self.keys.job(job_id))!r}, not a job "
                                 "record; the item was left where it was")
        return outcome

    def bury_as_is(self, raw: bytes, job_id: str, message: str, attempts: int) -> bool:
        """Dead-letter the item without touching its job record (which could not be written)."""
        entry = _dead_entry(raw, job_id, {"kind": "permanent", "message": message}, attempts, _now())
        return bool(self._transition(self._bury_as_is, keys=[self.processing, self.keys.dead], args=[raw, entry]))

    def requeue(self, raw: bytes, job_id: str, *, uncount: bool = True) -> bool:
        """Put a held item back at the consuming end of Q (shutdown deadline)."""
        return bool(self._checked(job_id, self._transition(
            self._requeue, keys=[self.processing, self.keys.queue, self.keys.job(job_id), self.keys.events],
            args=[raw, _now(), _event(job_id, "queued"), "1" if uncount else "0"])))

    def set_progress(self, job_id: str, progress: str) -> None:
        self.r.hset(self.keys.job(job_id), mapping={"progress": progress, "updated_at": _now()})

    # -- maintenance -------------------------------------------------------------------------
    def promote_due(self, limit: int = 100) -> list[str]:
        """Move due retries to the consuming end of Q; returns the job ids moved."""
        members = self.r.zrangebyscore(self.keys.retry, "-inf", _now(), start=0, num=limit)
        if not members:
            return []
        ids = [self.job_id_of(m[_RETRY_NONCE_LEN:]) for m in members]
        args: list[Any] = [_now(), len(members)]
        for member, job_id in zip(members, ids, strict=True):
            args += [member, _event(job_id, "queued", reason="retry due")]
        moved = self._transition(self._promote, keys=[self.keys.retry, self.keys.queue, self.keys.events, *map(self.keys.job, ids)],
                              args=args)
        return [ids[int(i) - 1] for i in moved]

    def heartbeat(self, ttl: float, info: dict[str, Any]) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self.keys.heartbeat(self.consumer), json.dumps(info, separators=(",", ":")), px=int(ttl * 1000))
        pipe.sadd(self.keys.consumers, self.consumer)
        pipe.execute()

    def recover_own(self) -> list[str]:
        """At start: we hold the pid lock, so whatever our consumer id still holds is a leftover
        of a crashed predecessor; put it back now instead of waiting for the heartbeat to expire.
        Returns the job ids put back."""
        return self._reap_consumer(self.consumer, force=True, reason="recovered at start") or []

    def reap(self) -> dict[str, list[str]]:
        """Give back the items of consumers whose heartbeat expired: {consumer: job ids}."""
        moved: dict[str, list[str]] = {}
        for raw_id in self.r.smembers(self.keys.consumers):
            consumer = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            if consumer == self.consumer or self.r.exists(self.keys.heartbeat(consumer)):
                continue
            ids = self._reap_consumer(consumer, force=False, reason=f"reaped from dead consumer {consumer}")
            if ids is not None:
                moved[consumer] = ids
        return moved

    def _reap_consumer(self, consumer: str, *, force: bool, reason: str) -> list[str] | None:
        """One script: if the consumer's heartbeat is gone (or `force`), its items go back to
        the consuming end of Q and their records say so. None when it turned out alive."""
        items = self.r.lrange(self.keys.processing(consumer), 0, -1)
        ids = [self.job_id_of(raw) for raw in items]
        args: list[Any] = [consumer, "1" if force else "0", _now(), reason, len(items)]
        for raw, job_id in zip(items, ids, strict=True):
            args += [raw, _event(job_id, "queued", reason=reason)]
        keys = [self.keys.processing(consumer), self.keys.queue, self.keys.heartbeat(consumer), self.keys.consumers,
                self.keys.events, *map(self.keys.job, ids)]
        moved = self._transition(self._reap, keys=keys, args=args)
        if moved == -1:  # its heartbeat came back meanwhile
            return None
        return [ids[int(i) - 1] if int(i) else "(unknown)" for i in moved]

    def orphans(self, held: list[bytes]) -> list[bytes]:
        """Items in our processing list that we do not hold: e.g. a BLMOVE whose reply was
        lost (Redis moved the item, then the socket timed out). `held`: every item we do hold
        (in flight or waiting to be recorded), duplicates included."""
        mine = collections.Counter(self.r.lrange(self.processing, 0, -1))
        mine.subtract(collections.Counter(held))
        return [raw for raw, n in mine.items() for _ in range(max(0, n))]

    def leave(self) -> None:
        """Clean exit: drop our heartbeat; keep our id in the set while we still hold items."""
        self.r.delete(self.keys.heartbeat(self.consumer))
        if self.r.llen(self.processing) == 0:
            self.r.srem(self.keys.consumers, self.consumer)

    # -- inspection --------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        consumers = sorted(c.decode() for c in self.r.smembers(self.keys.consumers))
        live, in_flight = [], {}
        for c in consumers:
            hb = self.r.get(self.keys.heartbeat(c))
            if hb is not None:
                live.append({"consumer": c, **json.loads(hb)})
            held = self.r.llen(self.keys.processing(c))
            if held:
                in_flight[c] = held
        return {
            "queue": self.keys.queue,
            "pending": self.r.llen(self.keys.queue),
            "processing": sum(in_flight.values()),
            "retry": self.r.zcard(self.keys.retry),
            "dead": self.r.llen(self.keys.dead),
            "replies": self.outbox.size(),  # recorded, not yet delivered to their reply_to
            "consumers": live,
            "in_flight": in_flight,
        }

    def own_holdings(self) -> tuple[int, list[str]]:
        """How many items our processing list holds, and the job ids our heartbeat names."""
        beat = self.r.get(self.keys.heartbeat(self.consumer))
        jobs = json.loads(beat).get("jobs", []) if beat else []
        return int(self.r.llen(self.processing)), jobs

    def dead_entries(self, limit: int = 100) -> list[bytes]:
        return self.r.lrange(self.keys.dead, 0, limit - 1)

    def dead_retry(self, ids: list[str] | None = None) -> int:
        """Move dead letters (all, or those whose job id is in `ids`) back to Q."""
        moved = 0
        for entry in self.r.lrange(self.keys.dead, 0, -1):
            try:
                parsed = json.loads(entry)
                job_id, raw = str(parsed["id"]), parsed["raw"]
            except (ValueError, KeyError, TypeError):
                continue
            if ids and job_id not in ids:
                continue
            moved += int(self._transition(self._dead_retry, keys=[self.keys.dead, self.keys.queue, self.keys.job(job_id)],
                                          args=[entry, raw, _now()]))
        return moved

    def dead_purge(self) -> int:
        pipe = self.r.pipeline(transaction=True)
        pipe.llen(self.keys.dead)
        pipe.delete(self.keys.dead)
        return int(pipe.execute()[0])
