"""Cancelling a job wherever it is, from any host: the producer's side.

A queued or retrying item is removed and its job finished as `cancelled` in one script. A job a
daemon holds gets a flag in its record (`cancel_requested`); the daemon that runs it checks its
jobs' flags every pass of its loop (at least once a second), kills their process groups and
records them as cancelled, and a daemon that claims a flagged job finishes it at once. A
finished job is left as it is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Literal

from clipper.keys import RETRY_NONCE_LEN, lua_source
from clipper.outbox import Reply
from clipper.queue import ReliableQueue

CancelOutcome = Literal["cancelled", "cancelling", "done", "failed", "unknown"]
# "cancelled": it was waiting and is finished now; "cancelling": a daemon holds it and will stop
# it within a second; "done"/"failed": already finished, left as it is ("cancelled" too);
# "unknown": no such job (never pushed, or its record expired).


class Canceller:
    """`cancel(job_id)` over a queue's keys; `result(job_id, attempts)` is the cancelled result."""

    def __init__(self, queue: ReliableQueue, result: Callable[[str, int], dict[str, Any]],
                 reply_to_of: Callable[[bytes], str | None]):
        self.queue = queue
        self.keys = queue.keys
        self.result = result
        self.reply_to_of = reply_to_of
        self._cancel_waiting = queue.redis.register_script(lua_source("cancel_waiting"))
        self._request_cancel = queue.redis.register_script(lua_source("request_cancel"))

    def cancel(self, job_id: str) -> CancelOutcome:
        for _ in range(3):  # an item may move (claimed, promoted) between our look and the script
            found = self._find_waiting(job_id)
            if found is None:
                break
            if self._finish_waiting(job_id, *found):
                return "cancelled"
        if not self._held(job_id) and not self.queue.redis.exists(self.keys.job(job_id)):
            return "unknown"
        outcome = self.queue.checked(job_id, self._request_cancel(keys=[self.keys.job(job_id)], args=[time.time()]))
        return outcome.decode() if isinstance(outcome, bytes) else outcome

    def _finish_waiting(self, job_id: str, place: str, kind: str, member: bytes, raw: bytes) -> bool:
        attempts = int(self.queue.redis.hget(self.keys.job(job_id), "attempts") or 0)
        result = self.result(job_id, attempts)
        payload = json.dumps(result, separators=(",", ":"))
        event = json.dumps({**result, "at": round(time.time(), 3)}, separators=(",", ":"))
        reply_to = self.reply_to_of(raw)
        # the reply is recorded with the outcome, in the outbox, and delivered now; if this
        # process dies first, a daemon's sweep delivers it (the producer has no heartbeat)
        reply = Reply.of(job_id, reply_to, payload, self.queue.consumer) if reply_to else None
        done = self.queue.checked(job_id, self._cancel_waiting(
            keys=[place, self.keys.job(job_id), self.keys.events, self.keys.outbox],
            args=[member, kind, payload, time.time(), self.queue.result_ttl, event,
                  *([reply.field, reply.entry] if reply else ["", ""])]))
        if done and reply is not None:
            self.queue.outbox.deliver(reply)
        return bool(done)

    def _find_waiting(self, job_id: str) -> tuple[str, str, bytes, bytes] | None:
        """(place, kind, member, raw) of an item of the job waiting in Q:retry, Q:high or Q.
        Reads whole lists: cancelling is rare, and a derived job id needs the message parsed."""
        for member in self.queue.redis.zrange(self.keys.retry, 0, -1):
            if self.queue.job_id_of(member[RETRY_NONCE_LEN:]) == job_id:
                return self.keys.retry, "zset", member, member[RETRY_NONCE_LEN:]
        for place in (self.keys.high, self.keys.queue):
            for raw in self.queue.redis.lrange(place, 0, -1):
                if self.queue.job_id_of(raw) == job_id:
                    return place, "list", raw, raw
        return None

    def _held(self, job_id: str) -> bool:
        """Whether some daemon's processing list holds an item of the job (it may have no
        record yet: claimed a moment ago)."""
        for consumer in self.queue.redis.smembers(self.keys.consumers):
            name = consumer.decode() if isinstance(consumer, bytes) else consumer
            if any(self.queue.job_id_of(raw) == job_id for raw in self.queue.redis.lrange(self.keys.processing(name), 0, -1)):
                return True
        return False
