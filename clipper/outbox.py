"""The reply outbox: replies to `reply_to` that survive a crash.

`reply_to` is the producer's key, not derived from `Q`, so on a Redis Cluster it may live in
another slot and cannot be written by the script that records an outcome. That script (ack,
bury) writes the reply instead into `Q:outbox` (a hash in Q's slot), atomically with the
outcome; the daemon then LPUSHes it to `reply_to` and only afterwards removes it. A daemon that
dies in between leaves the entry behind, naming its consumer: its own restart delivers it at
start, and any live daemon delivers the entries of consumers whose heartbeat expired. So a
reply is delivered at least once; a producer de-duplicates by the result's `id` (the job id).

Field: `<job_id>|<reply_to>` (a job id has no `|`). Value: JSON {reply_to, payload, consumer, at}.
This module knows the outbox key and delivery; the scripts live in lua/ (ack, bury,
outbox_delivered) and are loaded by queue.py.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from redis.commands.core import Script

from clipper.connections import RedisClient, WaitForReplicas, redis_trouble


@dataclass(frozen=True)
class Reply:
    """One outbox entry: where it goes and the exact text it carries."""

    field: str
    entry: str

    @classmethod
    def of(cls, job_id: str, reply_to: str, payload: str, consumer: str) -> Reply:
        entry = {"reply_to": reply_to, "payload": payload, "consumer": consumer, "at": round(time.time(), 3)}
        return cls(f"{job_id}|{reply_to}", json.dumps(entry, separators=(",", ":")))

    @property
    def job_id(self) -> str:
        return self.field.split("|", 1)[0]

    def parsed(self) -> dict[str, Any]:
        return json.loads(self.entry)


class Outbox:
    """Delivers outbox entries to their `reply_to` lists and removes them afterwards."""

    def __init__(self, client: RedisClient, key: str, consumer: str, heartbeat_key: Callable[[str], str],
                 delivered: Script, *, wait: WaitForReplicas | None = None,
                 on_short_wait: Callable[[str, int], None] = lambda k, n: None):
        """`delivered`: lua/outbox_delivered.lua, registered by the queue (which loads the scripts)."""
        self.redis = client
        self.key = key
        self.consumer = consumer
        self.heartbeat_key = heartbeat_key
        self.wait = wait
        self.on_short_wait = on_short_wait
        self._delivered = delivered

    def deliver(self, reply: Reply) -> bool:
        """LPUSH the reply to its list, then remove the entry. False when the list cannot take
        it (another type, no ACL permission): that will not change by trying again, so the
        entry goes too (the result is still in Q:job:<id> and on Q:events). Redis trouble
        propagates and the entry stays, for this daemon's next try or another's sweep."""
        entry = reply.parsed()
        reply_to, payload = entry["reply_to"], entry["payload"]
        try:
            if self.wait is None:
                self.redis.lpush(reply_to, payload)
            else:  # the reply lives on reply_to's node: WAIT there before the entry is dropped
                _, acked = self.wait.command(self.redis, reply_to, "LPUSH", reply_to, payload)
                if acked < self.wait.replicas:
                    self.on_short_wait(reply_to, acked)
            delivered = True
        except redis.ResponseError as exc:
            if redis_trouble(exc):
                raise
            delivered = False
        self._delivered(keys=[self.key], args=[reply.field, reply.entry])
        return delivered

    def _entries(self) -> Iterator[tuple[Reply, dict[str, Any]]]:
        for field, entry in self.redis.hscan_iter(self.key, count=500):
            reply = Reply(_text(field), _text(entry))
            try:
                yield reply, reply.parsed()
            except ValueError:
                continue  # not ours to read; left as it is

    def left_by_me(self) -> list[Reply]:
        """At start (we hold the pid lock): entries our crashed predecessor did not deliver."""
        return [reply for reply, entry in self._entries() if entry.get("consumer") == self.consumer]

    def left_by_the_dead(self) -> list[Reply]:
        """Entries of other consumers whose heartbeat expired: they will not deliver them."""
        found = []
        alive: dict[str, bool] = {}
        for reply, entry in self._entries():
            owner = str(entry.get("consumer"))
            if owner == self.consumer:
                continue
            if owner not in alive:
                alive[owner] = bool(self.redis.exists(self.heartbeat_key(owner)))
            if not alive[owner]:
                found.append(reply)
        return found

    def size(self) -> int:
        return int(self.redis.hlen(self.key))


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


REPLY_SKIPPED = "reply_to is not a list, or this client may not write it (ACL)"


class Deliveries:
    """The replies this daemon has to deliver, in order, each due `pause` seconds after it was
    recorded (0 in production; the crash tests widen the window between outcome and reply
    with `testing.pause_before_reply`, without stopping the loop or its heartbeat)."""

    def __init__(self, outbox: Outbox, log: Any, pause: float = 0.0):
        self.outbox = outbox
        self.log = log
        self.pause = pause
        self._due: collections.deque[tuple[float, Reply]] = collections.deque()

    def __len__(self) -> int:
        return len(self._due)

    def add(self, reply: Reply, recovered_from: str | None = None) -> None:
        if any(queued == reply for _, queued in self._due):
            return  # already on its way (a sweep found what we hold)
        self._due.append((time.monotonic() + self.pause, reply))
        if recovered_from:
            self.log.warning("job.reply_recovered", job_id=reply.job_id, consumer=recovered_from)

    def deliver_due(self) -> None:
        """Deliver what is due; Redis trouble propagates and the rest waits for the next round."""
        while self._due and self._due[0][0] <= time.monotonic():
            reply = self._due[0][1]
            if not self.outbox.deliver(reply):
                self.log.warning("job.reply_skipped", job_id=reply.job_id, reply_to=reply.parsed()["reply_to"],
                                 reason=REPLY_SKIPPED)
            self._due.popleft()

    def recover_own(self) -> None:
        """At start: what a crashed run of ours recorded and did not deliver."""
        for reply in self.outbox.left_by_me():
            self.add(reply, recovered_from=self.outbox.consumer)

    def adopt_from_the_dead(self) -> None:
        """Periodically: what consumers whose heartbeat expired left undelivered."""
        for reply in self.outbox.left_by_the_dead():
            self.add(reply, recovered_from=str(reply.parsed().get("consumer")))

    def due_now(self) -> bool:
        """Something is due (a stopping daemon delivers it first; a paused one is left to the sweep)."""
        return bool(self._due) and self._due[0][0] <= time.monotonic()
