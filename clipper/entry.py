"""The main loop: claim only when a worker is free, record outcomes, heartbeat, reap, drain.

Only the main thread talks to the queue's transitions and handles signals; a `JobRunner` on a
pool thread runs one job and reports how it ended, the `RetryPolicy` decides what follows,
and the main thread records it. When Redis is away the outcomes wait in memory and are
recorded once it is back, so no result or ack is lost; if the daemon dies meanwhile, the
items are still in its processing list and are redone (effects are idempotent: output keys
are a pure function of the message).
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import redis

from clipper import __version__, logs
from clipper.chores import Chores, RedisOutage
from clipper.connections import connect_redis, durability_warnings, redis_trouble, unreachable, wait_policy
from clipper.daemon import CannotStart, Readiness
from clipper.jobs.spec import job_id_for_raw, reply_to_for_raw
from clipper.keys import default_consumer_id
from clipper.media.command import JobControl
from clipper.observer import Observer
from clipper.outbox import Deliveries
from clipper.policy import Ack, Bury, Failure, Outcome, OutputBreaker, Requeue, Retry, RetryPolicy, cancelled_result
from clipper.queue import ReliableQueue
from clipper.runner import InFlight, JobRunner
from clipper.settings import Settings

# How long a claim may wait for an item: idle, a second (a blocking BLMOVE costs nothing);
# with jobs in flight, briefly, since the loop records their outcomes only between claims.
CLAIM_WAIT_IDLE = 1.0
CLAIM_WAIT_BUSY = 0.05
CANCEL_GRACE = 10.0  # after the deadline kill, how long stuck workers may take to return


class Supervisor:
    """Owns the loop, the pool and the signals; claims items for the job runner and records
    what the retry policy decided."""

    def __init__(self, settings: Settings, readiness: Readiness | None = None):
        self.settings = settings
        self.readiness = readiness or Readiness()
        self.log = logs.get_logger(env=settings.env)
        self.workers = settings.workers.resolved_count()
        self.consumer = default_consumer_id(str(settings.daemon.pid_file))
        self.queue = ReliableQueue(connect_redis(settings.redis), settings.redis.queue, self.consumer, job_id_of=job_id_for_raw,
                                   result_ttl=settings.results.ttl, wait=wait_policy(settings.redis),
                                   on_short_wait=self._short_wait)
        self.scratch = settings.daemon.work_dir / self.consumer
        self.in_flight: dict[Future, InFlight] = {}
        self.outcomes: collections.deque[Outcome] = collections.deque()
        self.wake = threading.Event()
        self.stopping = False
        self.deadline: float | None = None
        self.cancelled_at: float | None = None
        self.reload_requested = False
        self._stop_signals = 0  # counted by the handler, logged by the loop (no logging in handlers)
        self._stop_signals_logged = 0
        self.redis_outage = RedisOutage(self.log)
        self.abandoned = 0  # workers left stuck after the deadline (their items were requeued)
        self.breaker = OutputBreaker(settings.retry)
        self.policy = RetryPolicy(settings.retry, self.breaker)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="clipper-worker")
        self.observer = Observer(settings, self.queue, self.workers, in_flight=lambda: len(self.in_flight),
                                 breaker=self.breaker.state)
        self._runner = JobRunner(settings, self.scratch, self.observer.progress, self.observer.metrics)
        self.deliveries = Deliveries(self.queue.outbox, self.log, pause=settings.testing.pause_before_reply)
        self.chores = Chores(settings, self.queue, self.deliveries, self.log, heartbeat_info=self._heartbeat_info,
                             held=lambda: [i.raw for i in self.in_flight.values()] + [o.raw for o in self.outcomes])

    def _short_wait(self, key: str, acked: int) -> None:
        self.log.warning("redis.wait_short", key=key, replicas=acked, wanted=self.settings.redis.wait_replicas,
                         wait_timeout=self.settings.redis.wait_timeout,
                         reason="a failover now could undo this transition (it is redone or repeated, not lost)")

    # -- signals (main thread only) --------------------------------------------------------------
    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop_signal(self, signum: int, _frame: Any) -> None:
        now = time.monotonic()
        self._stop_signals += 1
        if not self.stopping:
            self.stopping = True
            self.deadline = now + self.settings.daemon.stop_timeout
        else:
            self.deadline = now  # second signal: the deadline is now
        # Flags only: no wake.set() here. Event.set takes a lock the main thread may be holding
        # inside wait()/clear() when the signal arrives, which would deadlock; every wait in
        # the loop is at most 1 s, so the flag is seen within a second.

    def _on_hup(self, _signum: int, _frame: Any) -> None:
        self.reload_requested = True

    # -- start ----------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Reach Redis, take back our own leftovers, warn about durability; raises on failure
        (CannotStart when Redis cannot be reached). Signal handlers come first: a `reload`
        racing a `start` must not kill the daemon."""
        self.install_signals()
        try:
            self._reach_redis()
        except redis.RedisError as exc:
            raise CannotStart(unreachable(self.settings.redis, exc)) from exc

    def _reach_redis(self) -> None:
        self.queue.redis.ping()
        for warning in durability_warnings(self.queue.redis, self.queue.keys.queue, self.queue.wait):
            self.log.warning("redis.durability", warning=warning)
        self.observer.start(self.log)
        shutil.rmtree(self.scratch, ignore_errors=True)  # a crashed predecessor's downloads
        self.scratch.mkdir(parents=True, exist_ok=True)
        for job_id in self.queue.recover_own():
            self.log.warning("job.requeued", job_id=job_id, reason="recovered at start (left by a crashed run)")
        self.deliveries.recover_own()
        self.chores.heartbeat()
        self._maintain(force=True)

    def leftovers(self) -> bool:
        """Workers still running, or abandoned stuck: the process must not wait for their threads."""
        return bool(self.abandoned or self.in_flight)

    def run(self) -> int:
        """The loop, after `prepare()` succeeded (errors there mean "cannot start")."""
        self.log.info("daemon.ready", pid=os.getpid(), workers=self.workers, consumer=self.consumer,
                      queue=self.settings.redis.queue, version=__version__)
        self.readiness.ready()
        try:
            self._loop()
        finally:
            self._finish()
        return 0

    # -- the loop -------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            self._answer_signals()
            self._collect()
            if not self._record_and_maintain():
                if self._give_up_waiting_for_redis():
                    return
            elif self.stopping:
                if self._drained():
                    return
                self._pause(0.2)
            else:
                self._claim_when_free()

    def _pause(self, seconds: float) -> None:
        """Wait until a job finishes, at most `seconds`."""
        self.wake.wait(seconds)
        self.wake.clear()

    def _answer_signals(self) -> None:
        """What the handlers only flagged: reopen the log (SIGHUP), say that a stop began."""
        if self.reload_requested:
            self.reload_requested = False
            self._reopen_log()
        if self._stop_signals > self._stop_signals_logged:
            self._log_stop_signal()

    def _reopen_log(self) -> None:
        if logs.reopen():
            self.log.info("log.reopened")
        else:
            self.log.error("log.reopen_failed", log_file=str(self.settings.daemon.log_file),
                           reason="cannot open the log file; still writing to the old one")

    def _record_and_maintain(self) -> bool:
        """Record every waiting outcome, deliver the replies due, then heartbeat, promote, reap;
        False while Redis is in trouble."""
        try:
            self._record_outcomes()
            self.deliveries.deliver_due()
            self._maintain()
        except redis.RedisError as exc:
            self._redis_trouble(exc)
            return False
        self.redis_outage.over()
        return True

    def _claim_when_free(self) -> None:
        if len(self.in_flight) >= self.workers or self.breaker.blocks_claim(busy=bool(self.in_flight)):
            self._pause(1.0)  # claim only when a worker slot is free (and the output takes writes)
            return
        try:
            # While a job runs, its outcome waits for this call to return: block only briefly
            # then, so a finished job is recorded (and its slot refilled) without a second's delay.
            raw = self.queue.claim(timeout=CLAIM_WAIT_BUSY if self.in_flight else CLAIM_WAIT_IDLE)
        except redis.RedisError as exc:
            self._redis_trouble(exc)
            return
        if raw is None:
            return
        if self.stopping:
            # the stop signal came while BLMOVE was waiting: this item is not ours to start
            self.outcomes.append(Requeue(raw, job_id_for_raw(raw), 0, "claimed during shutdown"))
            return
        self._start(raw)

    def _start(self, raw: bytes) -> None:
        job_id = job_id_for_raw(raw)
        try:
            attempts, cancel = self.queue.mark_claimed(job_id)
        except redis.RedisError as exc:
            attempts, cancel = 1, False  # counted as best we can; the item is safe in our processing list
            self.log.error("job.count_failed", job_id=job_id, error=str(exc))
        log = self.log.bind(job_id=job_id, attempt=attempts)
        reply_to = reply_to_for_raw(raw, self.settings.redis.queue)
        if cancel:  # cancelled while it was on its way to us
            log.warning("job.cancelled", seconds=0.0, reason="request")
            self.outcomes.append(Ack(raw, job_id, attempts, cancelled_result(job_id, attempts), reply_to))
            return
        poison = self.policy.poison(raw, job_id, attempts, reply_to, log)
        if poison is not None:
            self.outcomes.append(poison)
            return
        log.info("job.claimed", in_flight=len(self.in_flight) + 1, workers=self.workers)
        item = InFlight(raw, job_id, attempts, JobControl(job_id, failed=self.observer.metrics.subprocess_failed))
        self.observer.claimed(job_id)
        future = self._pool.submit(self._runner, item)
        self.in_flight[future] = item
        self.chores.heartbeat_soon()  # `clipper stats` shows in-flight jobs without delay
        future.add_done_callback(lambda _f: self.wake.set())

    def _collect(self) -> None:
        """Turn every finished job's report into an outcome waiting to be recorded."""
        for future in [f for f in self.in_flight if f.done()]:
            item = self.in_flight.pop(future)
            self.observer.collected(item.job_id)
            self.chores.heartbeat_soon()
            try:
                report = future.result()
            except BaseException as exc:  # noqa: BLE001 - JobRunner catches everything; belt and braces
                self.log.error("job.worker_crashed", job_id=item.job_id, error=repr(exc))
                self.outcomes.append(self.policy.runner_crashed(item.raw, item.job_id, exc))
                continue
            self.outcomes.append(self._decide(report))

    def _decide(self, report: Ack | Requeue | Failure) -> Outcome:
        log = self.log.bind(job_id=report.job_id, attempt=report.attempts)
        if isinstance(report, Failure):
            return self.policy.after_failure(report, log)
        if isinstance(report, Ack) and (failures := self.breaker.close()):
            log.warning("output.back", failures=failures)
        return report

    def _record_outcomes(self) -> None:
        """Record outcomes in order. Redis trouble propagates (the outcome stays queued here);
        an error about this one item's keys (e.g. its job key holds another type) must not
        block the others: the item is dead-lettered as it is, naming the error."""
        while self.outcomes:
            o = self.outcomes[0]
            try:
                self._record(o)
            except redis.RedisError as exc:
                if redis_trouble(exc):
                    raise
                kind = type(o).__name__.lower()
                self.log.error("job.record_failed", job_id=o.job_id, outcome=kind, error=str(exc))
                self._bury_as_is(o, f"cannot record the outcome ({kind}) in Redis: {exc}")
                self.observer.recorded(o, dead=True)
            self.outcomes.popleft()

    def _bury_as_is(self, o: Outcome, reason: str) -> None:
        """The last resort; when even Q:dead cannot take the item (a squatter there), it stays in
        our processing list, where nothing loses it, and the next outcomes are recorded."""
        try:
            self.queue.bury_as_is(o.raw, o.job_id, reason, o.attempts)
        except redis.RedisError as exc:
            if redis_trouble(exc):
                raise
            self.log.error("job.unrecordable", job_id=o.job_id, error=str(exc), reason=reason)

    def _record(self, o: Outcome) -> None:
        if isinstance(o, Ack):
            reply = self.queue.ack(o.raw, o.job_id, o.result, o.reply_to)
        elif isinstance(o, Retry):
            reply = None
            self.queue.retry_later(o.raw, o.job_id, o.delay, o.error.get("message", ""), uncount=o.uncount)
        elif isinstance(o, Bury):
            reply = self.queue.bury(o.raw, o.job_id, o.error, o.attempts, o.result, o.reply_to)
        else:
            reply = None
            self.queue.requeue(o.raw, o.job_id, uncount=o.uncount)
            self.log.info("job.requeued", job_id=o.job_id, reason=o.reason)
        self.observer.recorded(o)
        if reply:
            self.deliveries.add(reply)

    def _maintain(self, force: bool = False) -> None:
        self._notice_cancels()
        self.chores.run(force)

    def _notice_cancels(self) -> None:
        """Every pass of the loop (at least once a second): kill the jobs someone cancelled,
        from any host, through their flag in Redis. The runner then reports them cancelled."""
        running = {item.job_id: item for item in self.in_flight.values() if not item.control.is_cancelled()}
        if not running:
            return
        for job_id in self.queue.cancel_requested(list(running)):
            self.log.warning("job.cancelling", job_id=job_id, reason="cancel requested")
            running[job_id].control.cancel("request")

    def _heartbeat_info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "workers": self.workers, "in_flight": len(self.in_flight),
                "jobs": [i.job_id for i in self.in_flight.values()], "stopping": self.stopping,
                "at": round(time.time(), 3), **self.observer.heartbeat_fields()}

    def _redis_trouble(self, exc: Exception) -> None:
        """Keep collecting finished jobs (their outcomes wait here) and keep the stop deadline."""
        wait = self.redis_outage.trouble(exc, len(self.outcomes))
        self._collect()
        if self.stopping and self.deadline is not None and time.monotonic() >= self.deadline:
            self.cancel_in_flight()
        self._pause(wait)

    # -- shutdown -------------------------------------------------------------------------------
    def _log_stop_signal(self) -> None:
        first = self._stop_signals_logged == 0
        self._stop_signals_logged = self._stop_signals
        jobs = [item.job_id for item in self.in_flight.values()]
        if first:
            self.log.info("daemon.draining", in_flight=jobs, stop_timeout=self.settings.daemon.stop_timeout)
        else:
            self.log.warning("daemon.deadline_now", in_flight=jobs, reason="second stop signal")

    def _drained(self) -> bool:
        """While stopping: True once nothing is in flight and every outcome is recorded."""
        now = time.monotonic()
        if self.in_flight and self.deadline is not None and now >= self.deadline:
            self.cancel_in_flight()
        if self.in_flight and self.cancelled_at is not None and now - self.cancelled_at > CANCEL_GRACE:
            # Workers stuck outside a subprocess (e.g. an S3 call): their items go back anyway.
            for future, item in list(self.in_flight.items()):
                self.log.error("job.abandoned", job_id=item.job_id)
                self.outcomes.append(Requeue(item.raw, item.job_id, item.attempts, "worker stuck past the deadline",
                                             uncount=True))
                self.in_flight.pop(future)
                self.abandoned += 1
        return not self.in_flight and not self.outcomes and not self.deliveries.due_now()

    def _give_up_waiting_for_redis(self) -> bool:
        """Stopping, past the deadline and its grace, Redis still away: exit anyway. Unrecorded
        items stay in our processing list and are taken back by the next start."""
        if not (self.stopping and self.deadline is not None):
            return False
        if time.monotonic() < self.deadline + CANCEL_GRACE:
            return False
        self.log.error("daemon.exit_without_redis", unrecorded=[o.job_id for o in self.outcomes])
        return True

    def cancel_in_flight(self) -> None:
        if self.cancelled_at is not None:
            return
        self.cancelled_at = time.monotonic()
        jobs = [item.job_id for item in self.in_flight.values()]
        self.log.warning("daemon.deadline", jobs=jobs)
        for item in self.in_flight.values():
            item.control.cancel()

    def _finish(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.observer.close()
        try:
            self.queue.leave()
        except redis.RedisError as exc:
            self.log.warning("redis.leave_failed", error=str(exc))
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.log.info("daemon.stopped", pid=os.getpid())
