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
import random
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.commands.core import Script

from clipper.connections import RedisClient, WaitForReplicas
from clipper.foreign import ForeignKeys, heartbeat_info, key_type
from clipper.keys import HIGH_SCAN, RETRY_NONCE_LEN, Keys, lua_source
from clipper.outbox import Outbox, Reply


class ForeignKeyError(redis.ResponseError):
    """A list or sorted set an item was to move into (Q, Q:dead, Q:retry) holds another type,
    planted by someone else: nothing was written, the item stays where it was."""


class JobRecordError(redis.ResponseError):
    """A job's record key (Q:job:<id>) holds another type: nothing was written, the item stays
    where it was, and the caller dead-letters it as it is."""


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
        self.redis = client
        self.wait = wait
        self.on_short_wait = on_short_wait
        self.job_id_of = job_id_of
        self.keys = Keys(queue)
        self.consumer = consumer
        self.processing = self.keys.processing(consumer)
        self.outbox = Outbox(client, self.keys.outbox, consumer, self.keys.heartbeat,
                             client.register_script(lua_source("outbox_delivered")), wait=wait,
                             on_short_wait=on_short_wait)
        self.result_ttl = result_ttl
        self._mark_claimed = client.register_script(lua_source("mark_claimed"))
        self._ack = client.register_script(lua_source("ack"))
        self._retry_later = client.register_script(lua_source("retry_later"))
        self._bury = client.register_script(lua_source("bury"))
        self._requeue = client.register_script(lua_source("requeue"))
        self._bury_as_is = client.register_script(lua_source("bury_as_is"))
        self._promote = client.register_script(lua_source("promote"))
        self._reap = client.register_script(lua_source("reap"))
        self._dead_retry = client.register_script(lua_source("dead_retry"))
        self._heartbeat = client.register_script(lua_source("heartbeat"))
        self.foreign = ForeignKeys()  # squatters under Q: found on the way (see clipper/foreign.py)
        self._claim_high = client.register_script(lua_source("claim_high"))
        self._trim_dead = client.register_script(lua_source("trim_dead"))

    # -- producers -------------------------------------------------------------------------
    def push(self, raw: bytes | str) -> int:
        return int(self.redis.lpush(self.keys.queue, raw))

    # -- taking and finishing work -----------------------------------------------------------
    def claim(self, timeout: float = 1.0) -> bytes | None:
        """Move the oldest high-priority item, else the oldest pending item, into our processing
        list (blocks at most `timeout` waiting for one)."""
        raw = self._claim_high(keys=[self.keys.queue, self.keys.high, self.processing], args=[HIGH_SCAN])
        if raw:
            return raw
        return self.redis.blmove(self.keys.queue, self.processing, timeout, "RIGHT", "LEFT")

    def mark_claimed(self, job_id: str) -> tuple[int, bool]:
        """Count the attempt and mark the job running; returns the attempt number, and whether a
        cancel was asked for while the item was on its way to us."""
        attempts, cancel = self.checked(job_id, self._mark_claimed(keys=[self.keys.job(job_id)], args=[_now()]))
        self.redis.publish(self.keys.events, _event(job_id, "running", attempts=int(attempts)))
        return int(attempts), bool(cancel)

    def cancel_requested(self, job_ids: list[str]) -> set[str]:
        """Those of `job_ids` (jobs we hold) that someone asked to cancel (see clipper.cancel)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(self.keys.job(job_id), "cancel_requested")
        return {job_id for job_id, flag in zip(job_ids, pipe.execute(), strict=True) if flag}

    def ack(self, raw: bytes, job_id: str, result: dict[str, Any], reply_to: str | None = None) -> Reply | None:
        """Record the result (job hash, event, the reply in the outbox) and remove the item, in
        one step. Returns the reply to deliver (`outbox.deliver`), None when none was asked."""
        payload = json.dumps(result, separators=(",", ":"))
        reply = Reply.of(job_id, reply_to, payload, self.consumer) if reply_to else None
        self.checked(job_id, self._transition(self._ack, keys=[self.processing, self.keys.job(job_id), self.keys.events,
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
        return bool(self.checked(job_id, self._transition(
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
        self.checked(job_id, self._transition(
            self._bury, keys=[self.processing, self.keys.dead, self.keys.job(job_id), self.keys.events, self.keys.outbox],
            args=[raw, entry, payload, now, self.result_ttl, _result_event(result), *_reply_args(reply)]))
        return reply

    def _transition(self, script: Script, keys: list[Any], args: list[Any]) -> Any:
        """Run one transition's script; with redis.wait_replicas, also WAIT for the replicas so
        a failover cannot undo it (a short count is reported, the transition stands)."""
        if self.wait is None:
            return script(keys=keys, args=args)
        result, acked = self.wait.script(self.redis, script, keys, args)
        if acked < self.wait.replicas:
            self.on_short_wait(str(keys[0]), acked)
        return result

    def checked(self, job_id: str, outcome: Any) -> Any:
        if outcome == -2:
            squatters = self.foreign.squatters(self.redis, {self.keys.queue: "list", self.keys.dead: "list",
                                                            self.keys.retry: "zset"}, "items cannot move into it")
            raise ForeignKeyError(f"{', '.join(squatters) or 'a key of the queue'} holds another type than clipper "
                                  "writes there; the item was left where it was")
        if outcome == -1:
            raise JobRecordError(f"{self.keys.job(job_id)} holds a {self.redis.type(self.keys.job(job_id))!r}, not a job "
                                 "record; the item was left where it was")
        return outcome

    def bury_as_is(self, raw: bytes, job_id: str, message: str, attempts: int) -> bool:
        """Dead-letter the item without touching its job record (which could not be written)."""
        entry = _dead_entry(raw, job_id, {"kind": "permanent", "message": message}, attempts, _now())
        return bool(self.checked(job_id, self._transition(self._bury_as_is, keys=[self.processing, self.keys.dead],
                                                          args=[raw, entry])))

    def requeue(self, raw: bytes, job_id: str, *, uncount: bool = True) -> bool:
        """Put a held item back at the consuming end of Q (shutdown deadline)."""
        return bool(self.checked(job_id, self._transition(
            self._requeue, keys=[self.processing, self.keys.queue, self.keys.job(job_id), self.keys.events],
            args=[raw, _now(), _event(job_id, "queued"), "1" if uncount else "0"])))

    def set_progress(self, job_id: str, stage: str, percent: float | None = None, eta: float | None = None) -> None:
        """A running job's stage, percent done and seconds left (when known) in its record, and
        the same as an event (status "running") on Q:events: two round trips (a cluster client
        cannot pipeline PUBLISH)."""
        now, key = _now(), self.keys.job(job_id)
        fields: dict[str, Any] = {"progress": stage, "updated_at": now}
        extra: dict[str, Any] = {"progress": stage}
        if percent is not None:
            fields["percent"] = extra["percent"] = percent
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping=fields)
        if eta is not None:
            pipe.hset(key, "eta", eta)
            extra["eta"] = eta
        else:
            pipe.hdel(key, "eta")
        pipe.execute()
        self.redis.publish(self.keys.events, _event(job_id, "running", **extra))

    # -- maintenance -------------------------------------------------------------------------
    def promote_due(self, limit: int = 100) -> list[str]:
        """Move due retries to the consuming end of Q; returns the job ids moved."""
        if not self.foreign.check(self.redis, self.keys.retry, "zset", "no retry can be promoted"):
            return []
        members = self.redis.zrangebyscore(self.keys.retry, "-inf", _now(), start=0, num=limit)
        if not members:
            return []
        ids = [self.job_id_of(m[RETRY_NONCE_LEN:]) for m in members]
        args: list[Any] = [_now(), len(members)]
        for member, job_id in zip(members, ids, strict=True):
            args += [member, _event(job_id, "queued", reason="retry due")]
        moved = self._transition(self._promote, keys=[self.keys.retry, self.keys.queue, self.keys.events, *map(self.keys.job, ids)],
                              args=args)
        return [ids[int(i) - 1] for i in moved]

    def heartbeat(self, ttl: float, info: dict[str, Any]) -> None:
        found = self._heartbeat(keys=[self.keys.heartbeat(self.consumer), self.keys.consumers],
                                args=[self.consumer, json.dumps(info, separators=(",", ":")), int(ttl * 1000)])
        if found:
            self.foreign.note(self.keys.consumers, found.decode() if isinstance(found, bytes) else str(found), "set",
                              "consumers cannot be listed, so none can be reaped")

    def recover_own(self) -> list[str]:
        """At start: we hold the pid lock, so whatever our consumer id still holds is a leftover
        of a crashed predecessor; put it back now instead of waiting for the heartbeat to expire.
        Returns the job ids put back."""
        return self._reap_consumer(self.consumer, force=True, reason="recovered at start") or []

    def reap(self) -> dict[str, list[str]]:
        """Give back the items of consumers whose heartbeat expired: {consumer: job ids}."""
        moved: dict[str, list[str]] = {}
        if not self.foreign.check(self.redis, self.keys.consumers, "set", "consumers cannot be listed, so none can "
                                  "be reaped"):
            return moved
        for raw_id in self.redis.smembers(self.keys.consumers):
            consumer = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            if consumer == self.consumer or self._alive(consumer):
                continue
            ids = self._reap_consumer(consumer, force=False, reason=f"reaped from dead consumer {consumer}")
            if ids is not None:
                moved[consumer] = ids
        return moved

    def _alive(self, consumer: str) -> bool:
        """Only a string is a heartbeat: another type planted there is reported, and the
        consumer counts as dead (else its items would never be reaped)."""
        found = key_type(self.redis, self.keys.heartbeat(consumer))
        if found not in ("string", "none"):
            self.foreign.note(self.keys.heartbeat(consumer), found, "string (a heartbeat)",
                              f"consumer {consumer} counts as dead")
        return found == "string"

    def _reap_consumer(self, consumer: str, *, force: bool, reason: str) -> list[str] | None:
        """One script: if the consumer's heartbeat is gone (or `force`), its items go back to
        the consuming end of Q and their records say so. None when it turned out alive, or
        when its processing list or Q holds another type (reported; nothing moved)."""
        held = self.keys.processing(consumer)
        if not (self.foreign.check(self.redis, held, "list", f"the items of consumer {consumer} cannot be reaped")
                and self.foreign.check(self.redis, self.keys.queue, "list", "no item can go back to the queue")):
            return None
        items = self.redis.lrange(self.keys.processing(consumer), 0, -1)
        ids = [self.job_id_of(raw) for raw in items]
        args: list[Any] = [consumer, "1" if force else "0", _now(), reason, len(items)]
        for raw, job_id in zip(items, ids, strict=True):
            args += [raw, _event(job_id, "queued", reason=reason)]
        keys = [self.keys.processing(consumer), self.keys.queue, self.keys.heartbeat(consumer), self.keys.consumers,
                self.keys.events, *map(self.keys.job, ids)]
        moved = self._transition(self._reap, keys=keys, args=args)
        if moved in (-1, -2):  # its heartbeat came back meanwhile; a squatter came meanwhile
            return None
        return [ids[int(i) - 1] if int(i) else "(unknown)" for i in moved]

    def orphans(self, held: list[bytes]) -> list[bytes]:
        """Items in our processing list that we do not hold: e.g. a BLMOVE whose reply was
        lost (Redis moved the item, then the socket timed out). `held`: every item we do hold
        (in flight or waiting to be recorded), duplicates included."""
        mine = collections.Counter(self.redis.lrange(self.processing, 0, -1))
        mine.subtract(collections.Counter(held))
        return [raw for raw, n in mine.items() for _ in range(max(0, n))]

    def leave(self) -> None:
        """Clean exit: drop our heartbeat; keep our id in the set while we still hold items."""
        self.redis.delete(self.keys.heartbeat(self.consumer))
        if self.redis.llen(self.processing) == 0:
            self.redis.srem(self.keys.consumers, self.consumer)

    # -- inspection --------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Depths, live consumers and what they hold. A squatter under Q: (another type than
        clipper writes there) counts as empty and is listed under `foreign`, instead of
        failing the whole report with a WRONGTYPE error."""
        found = ForeignKeys()

        def read(key: str, expected: str, command: Callable[[str], Any], empty: Any) -> Any:
            return command(key) if found.check(self.redis, key, expected, "counted as empty") else empty

        consumers = sorted(c.decode() for c in read(self.keys.consumers, "set", self.redis.smembers, set()))
        live, in_flight = [], {}
        for c in consumers:
            beat = read(self.keys.heartbeat(c), "string", self.redis.get, None)
            if beat is not None:
                live.append({"consumer": c, **heartbeat_info(beat)})
            held = read(self.keys.processing(c), "list", self.redis.llen, 0)
            if held:
                in_flight[c] = held
        return {
            "queue": self.keys.queue,
            "pending": read(self.keys.queue, "list", self.redis.llen, 0) + read(self.keys.high, "list", self.redis.llen, 0),
            "pending_high": read(self.keys.high, "list", self.redis.llen, 0),
            "processing": sum(in_flight.values()),
            "retry": read(self.keys.retry, "zset", self.redis.zcard, 0),
            "dead": read(self.keys.dead, "list", self.redis.llen, 0),
            "dead_dropped": int(read(self.keys.dead_dropped, "string", self.redis.get, None) or 0),
            "replies": self.outbox.size(),  # recorded, not yet delivered to their reply_to
            "consumers": live,
            "in_flight": in_flight,
            "foreign": found.all(),
        }

    def depths(self) -> dict[str, int]:
        """Items pending, held by any consumer, waiting to retry, dead: two round trips (a
        metrics scrape asks this every few seconds)."""
        consumers = [c.decode() for c in self.redis.smembers(self.keys.consumers)]
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(self.keys.queue)
        pipe.llen(self.keys.high)
        pipe.zcard(self.keys.retry)
        pipe.llen(self.keys.dead)
        for c in consumers:
            pipe.llen(self.keys.processing(c))
        pending, high, retry, dead, *held = pipe.execute()
        return {"pending": pending + high, "processing": sum(held), "retry": retry, "dead": dead}

    def heartbeat_of(self, consumer: str | None = None) -> dict[str, Any] | None:
        """A consumer's (default: ours) last heartbeat, or None once it expired."""
        beat = self.redis.get(self.keys.heartbeat(consumer or self.consumer))
        return json.loads(beat) if beat else None

    def job_record(self, job_id: str) -> dict[str, str]:
        """Q:job:<id> as text ({} when there is none)."""
        return {k.decode(): v.decode("utf-8", "replace") for k, v in self.redis.hgetall(self.keys.job(job_id)).items()}

    def own_holdings(self) -> tuple[int, list[str]]:
        """How many items our processing list holds, and the job ids our heartbeat names."""
        beat = self.redis.get(self.keys.heartbeat(self.consumer))
        jobs = json.loads(beat).get("jobs", []) if beat else []
        return int(self.redis.llen(self.processing)), jobs

    def dead_entries(self, limit: int = 100) -> list[bytes]:
        return self.redis.lrange(self.keys.dead, 0, limit - 1)

    def dead_retry(self, ids: list[str] | None = None) -> int:
        """Move dead letters (all, or those whose job id is in `ids`) back to Q."""
        moved = 0
        for entry in self.redis.lrange(self.keys.dead, 0, -1):
            try:
                parsed = json.loads(entry)
                job_id, raw = str(parsed["id"]), parsed["raw"]
            except (ValueError, KeyError, TypeError):
                continue
            if ids and job_id not in ids:
                continue
            # -1/-2: the job key or Q holds another type; the letter stays dead rather than lose anything
            moved += max(0, int(self._transition(self._dead_retry, keys=[self.keys.dead, self.keys.queue,
                                                                         self.keys.job(job_id)],
                                                 args=[entry, raw, _now()])))
        return moved

    def trim_dead(self, max_entries: int, max_age: float, batch: int = 1000) -> int:
        """Retention: drop the oldest dead letters beyond `max_entries` and older than `max_age`
        seconds (0: no limit), counted in Q:dead:dropped; returns how many were dropped."""
        cutoff = _now() - max_age if max_age > 0 else 0
        return int(self._trim_dead(keys=[self.keys.dead, self.keys.dead_dropped], args=[max_entries, cutoff, batch]))

    def dead_entry(self, job_id: str) -> bytes | None:
        """The newest dead letter of a job, or None."""
        for entry in self.redis.lrange(self.keys.dead, 0, -1):
            try:
                if str(json.loads(entry).get("id")) == job_id:
                    return entry
            except (ValueError, AttributeError):
                continue
        return None

    def dead_purge(self) -> int:
        pipe = self.redis.pipeline(transaction=True)
        pipe.llen(self.keys.dead)
        pipe.delete(self.keys.dead)
        return int(pipe.execute()[0])
