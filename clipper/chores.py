"""The loop's periodic chores, each on its own period, and the record of a Redis outage.

`Chores.run` trims the dead letters, writes the heartbeat, promotes due retries, reaps dead
consumers (their items, our own orphans and the replies they left undelivered) and reports the
keys of another type met under `Q`. The main thread calls it every pass of the loop; what is
not due costs nothing. Redis errors propagate: the loop waits the outage out and calls again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from clipper.jobs.spec import job_id_for_raw
from clipper.outbox import Deliveries
from clipper.queue import ReliableQueue
from clipper.settings import Settings


class Chores:
    def __init__(self, settings: Settings, queue: ReliableQueue, deliveries: Deliveries, log: Any, *,
                 heartbeat_info: Callable[[], dict[str, Any]], held: Callable[[], list[bytes]]):
        """`heartbeat_info`: what the heartbeat says now; `held`: the raw items this daemon's
        workers and unrecorded outcomes hold (the rest of its processing list is orphaned)."""
        self.settings = settings
        self.queue = queue
        self.deliveries = deliveries
        self.log = log
        self.heartbeat_info = heartbeat_info
        self.held = held
        self._next = {"heartbeat": 0.0, "promote": 0.0, "reap": 0.0, "trim_dead": 0.0}

    def heartbeat_soon(self) -> None:
        """Beat on the next pass (`clipper stats` shows a job claimed or finished at once)."""
        self._next["heartbeat"] = 0.0

    def run(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now >= self._next["trim_dead"]:
            self._trim_dead()
            self._next["trim_dead"] = now + 1.0
        if force or now >= self._next["heartbeat"]:
            self.heartbeat()
            self._next["heartbeat"] = now + self.settings.redis.heartbeat_ttl / 3
        if force or now >= self._next["promote"]:
            for job_id in self.queue.promote_due():
                self.log.info("job.requeued", job_id=job_id, reason="retry due")
            self._next["promote"] = now + 1.0
        if force or now >= self._next["reap"]:
            self._reap()
            self._next["reap"] = now + self.settings.redis.heartbeat_ttl / 2
        for finding in self.queue.foreign.untold():  # squatters the heartbeat or the reaper met
            self.log.error("queue.foreign_key", finding=finding)

    def heartbeat(self) -> None:
        self.queue.heartbeat(self.settings.redis.heartbeat_ttl, self.heartbeat_info())

    def _trim_dead(self) -> None:
        dead = self.settings.dead
        dropped = self.queue.trim_dead(dead.max_entries, dead.max_age)
        if dropped:
            self.log.info("dead.trimmed", dropped=dropped, max_entries=dead.max_entries, max_age=dead.max_age)

    def _reap(self) -> None:
        for consumer, job_ids in self.queue.reap().items():
            self.log.warning("queue.reaped", consumer=consumer, items=len(job_ids))
            for job_id in job_ids:
                self.log.warning("job.requeued", job_id=job_id, reason=f"reaped from dead consumer {consumer}")
        self._requeue_orphans()
        self.deliveries.adopt_from_the_dead()

    def _requeue_orphans(self) -> None:
        """Items in our processing list that no worker holds (a BLMOVE whose reply was lost)
        would otherwise wait there until our next start: give them back now."""
        for raw in self.queue.orphans(self.held()):
            job_id = job_id_for_raw(raw)
            self.queue.requeue(raw, job_id, uncount=False)
            self.log.warning("job.requeued", job_id=job_id, reason="held by this daemon but by no worker")


class RedisOutage:
    """One stretch of Redis trouble: logged when it starts and when it ends; waits grow with it."""

    def __init__(self, log: Any):
        self.log = log
        self.since: float | None = None

    def trouble(self, exc: Exception, pending_outcomes: int) -> float:
        """Redis failed a call: the seconds to wait before the next try."""
        if self.since is None:
            self.since = time.monotonic()
            self.log.error("redis.unavailable", error=str(exc), pending_outcomes=pending_outcomes)
        return min(1.0, 0.1 + (time.monotonic() - self.since) / 10)

    def over(self) -> None:
        """Redis answered again."""
        if self.since is not None:
            self.log.warning("redis.back", down_seconds=round(time.monotonic() - self.since, 3))
            self.since = None


