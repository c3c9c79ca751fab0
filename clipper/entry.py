"""The main loop: claim only when a worker is free, record outcomes, heartbeat, reap, drain.

Only the main thread talks to the queue's transitions and handles signals; workers run one
job each and return an `Outcome`, which the main thread records. When Redis is away the
outcomes wait in memory and are recorded once it is back, so no result or ack is lost; if the
daemon dies meanwhile, the items are still in its processing list and are redone (effects
are idempotent: output keys are a pure function of the message).
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import redis

from clipper import __version__, logs
from clipper.connections import connect_redis, redis_trouble, replica_shortfall, wait_policy
from clipper.daemon import Readiness
from clipper.errors import Cancelled, OutputUnavailable, PermanentError, TransientError
from clipper.jobs.command import JobControl
from clipper.jobs.pipeline import JobContext, failed_result, run_job
from clipper.jobs.spec import JobSpec, job_id_for_raw, parse_message, reply_to_for_raw
from clipper.jobs.upload import make_uploader
from clipper.outbox import Deliveries
from clipper.queue import ReliableQueue, backoff_delay, default_consumer_id
from clipper.settings import Settings

CANCEL_GRACE = 10.0  # after the deadline kill, how long stuck workers may take to return


@dataclass
class Outcome:
    kind: Literal["ack", "retry", "bury", "requeue"]
    raw: bytes
    job_id: str
    result: dict[str, Any] | None = None
    reply_to: str | None = None
    delay: float = 0.0
    error: dict[str, str] | None = None
    attempts: int = 0
    uncount: bool = False  # requeue/retry: this attempt is not counted (our shutdown, the output's outage)
    output_down: bool = False  # retry: the output could not take the upload
    reason: str | None = None  # requeue: why, for the log


@dataclass
class InFlight:
    raw: bytes
    job_id: str
    attempts: int
    control: JobControl


def redis_durability_warnings(client: redis.Redis) -> list[str]:
    """Redis is the system of record: eviction or no persistence can drop queued items."""
    warnings = []
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
        aof = client.config_get("appendonly").get("appendonly")
        save = client.config_get("save").get("save")
    except redis.ResponseError:
        return ["cannot read Redis CONFIG (managed Redis?): check maxmemory-policy=noeviction and persistence yourself"]
    if policy and policy != "noeviction":
        warnings.append(f"Redis maxmemory-policy is {policy!r}, not 'noeviction': queued items can be evicted")
    if aof == "no" and not save:
        warnings.append("Redis persistence is off (appendonly no, no save points): a Redis restart loses every queued item")
    return warnings


class Worker:
    """Runs one job on a pool thread and says what should happen to its item."""

    def __init__(self, settings: Settings, queue: ReliableQueue, scratch: Path):
        self.settings = settings
        self.queue = queue
        self.scratch = scratch
        self.uploader = make_uploader(settings.output)

    def __call__(self, item: InFlight) -> Outcome:
        log = logs.get_logger(env=self.settings.env, job_id=item.job_id, attempt=item.attempts)
        spec: JobSpec | None = None
        started = time.monotonic()
        try:
            spec = parse_message(item.raw, self.settings.media)
            ctx = JobContext(settings=self.settings, uploader=self.uploader, control=item.control,
                             scratch=self.scratch, progress=lambda stage: self._progress(item.job_id, stage), log=log)
            result = run_job(spec, ctx, item.attempts)
            log.info("job.done", seconds=round(time.monotonic() - started, 3), outputs=len(result["outputs"]),
                     timings=result["timings"])
            return Outcome("ack", item.raw, item.job_id, result=result, reply_to=spec.reply_to, attempts=item.attempts)
        except Cancelled:
            log.warning("job.cancelled", seconds=round(time.monotonic() - started, 3))
            return Outcome("requeue", item.raw, item.job_id, attempts=item.attempts, uncount=True,
                           reason="cancelled at the stop deadline")
        except OutputUnavailable as exc:
            message = logs.scrub(str(exc))
            log.warning("job.retry", error=message, reason="output unavailable", seconds=round(time.monotonic() - started, 3))
            # the delay is the main loop's to set: it pauses claiming for the whole daemon
            return Outcome("retry", item.raw, item.job_id, error={"kind": "transient", "message": message},
                           attempts=item.attempts, uncount=True, output_down=True)
        except PermanentError as exc:
            return self._failed(item, spec, "permanent", str(exc), log, started)
        except TransientError as exc:
            return self._failed(item, spec, "transient", str(exc), log, started)
        except Exception as exc:  # noqa: BLE001 - a bug must not kill the daemon or lose the item
            log.exception("job.internal_error")
            return self._failed(item, spec, "transient", f"internal error: {type(exc).__name__}: {exc}", log, started)

    def _failed(self, item: InFlight, spec: JobSpec | None, kind: str, message: str, log: Any, started: float) -> Outcome:
        message = logs.scrub(message)
        error = {"kind": kind, "message": message}
        seconds = round(time.monotonic() - started, 3)
        max_attempts = self.settings.retry.max_attempts
        reply_to = spec.reply_to if spec else None
        if kind == "transient" and item.attempts < max_attempts:
            r = self.settings.retry
            delay = backoff_delay(item.attempts, r.backoff_base, r.backoff_max)
            log.warning("job.retry", error=message, delay=round(delay, 3), seconds=seconds)
            return Outcome("retry", item.raw, item.job_id, delay=delay, error=error, attempts=item.attempts)
        if kind == "transient":
            error = {"kind": kind, "message": f"gave up after {item.attempts} attempts (retry.max_attempts): {message}"}
        log.error("job.dead", error=error["message"], kind=kind, seconds=seconds)
        result = failed_result(item.job_id, item.attempts, error)
        return Outcome("bury", item.raw, item.job_id, result=result, reply_to=reply_to, error=error, attempts=item.attempts)

    def _progress(self, job_id: str, stage: str) -> None:
        try:
            self.queue.set_progress(job_id, stage)
        except redis.RedisError:
            pass  # progress is informative; the outcome is what must not be lost


class Entry:
    """Owns the loop, the pool and the signals; talks to the queue and to the workers."""

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
        self.redis_down_since: float | None = None
        self.abandoned = 0  # workers left stuck after the deadline (their items were requeued)
        self.output_failures = 0  # consecutive uploads that failed for the output's sake
        self.output_paused_until = 0.0
        self._next = {"heartbeat": 0.0, "promote": 0.0, "reap": 0.0}
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="clipper-worker")
        self._worker = Worker(settings, self.queue, self.scratch)
        self.deliveries = Deliveries(self.queue.outbox, self.log, pause=settings.testing.pause_before_reply)

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
        """Reach Redis, take back our own leftovers, warn about durability; raises on failure.
        Signal handlers come first: a `reload` racing a `start` must not kill the daemon."""
        self.install_signals()
        self.queue.r.ping()
        for warning in redis_durability_warnings(self.queue.r):
            self.log.warning("redis.durability", warning=warning)
        shortfall = self.queue.wait and replica_shortfall(self.queue.r, self.queue.keys.queue, self.queue.wait.replicas)
        if shortfall:
            self.log.warning("redis.durability", warning=shortfall)
        shutil.rmtree(self.scratch, ignore_errors=True)  # a crashed predecessor's downloads
        self.scratch.mkdir(parents=True, exist_ok=True)
        for job_id in self.queue.recover_own():
            self.log.warning("job.requeued", job_id=job_id, reason="recovered at start (left by a crashed run)")
        self.deliveries.recover_own()
        self._heartbeat()
        self._maintain(force=True)

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
            if self.reload_requested:
                self.reload_requested = False
                if logs.reopen():
                    self.log.info("log.reopened")
                else:
                    self.log.error("log.reopen_failed", log_file=str(self.settings.daemon.log_file),
                                   reason="cannot open the log file; still writing to the old one")
            if self._stop_signals > self._stop_signals_logged:
                self._log_stop_signal()
            self._collect_finished()
            try:
                self._record_outcomes()
                self.deliveries.deliver_due()
                self._maintain()
                if self.redis_down_since is not None:
                    self.log.warning("redis.back", down_seconds=round(time.monotonic() - self.redis_down_since, 3))
                    self.redis_down_since = None
            except redis.RedisError as exc:
                self._redis_trouble(exc)
                if self._give_up_waiting_for_redis():
                    return
                continue
            if self.stopping:
                if self._drained():
                    return
                self.wake.wait(0.2)
                self.wake.clear()
                continue
            if len(self.in_flight) >= self.workers or self._output_blocks_claim():
                self.wake.wait(1.0)  # claim only when a worker slot is free (and the output takes writes)
                self.wake.clear()
                continue
            try:
                raw = self.queue.claim(timeout=1)
            except redis.RedisError as exc:
                self._redis_trouble(exc)
                continue
            if raw is None:
                continue
            if self.stopping:
                # the stop signal came while BLMOVE was waiting: this item is not ours to start
                self.outcomes.append(Outcome("requeue", raw, job_id_for_raw(raw), reason="claimed during shutdown"))
                continue
            self._start(raw)

    def _start(self, raw: bytes) -> None:
        job_id = job_id_for_raw(raw)
        try:
            attempts = self.queue.mark_claimed(job_id)
        except redis.RedisError as exc:
            attempts = 1  # counted as best we can; the item is safe in our processing list
            self.log.error("job.count_failed", job_id=job_id, error=str(exc))
        item = InFlight(raw, job_id, attempts, JobControl(job_id))
        log = self.log.bind(job_id=job_id, attempt=attempts)
        if attempts > self.settings.retry.max_attempts:
            # It was claimed this often without an outcome: it kills the daemon (or a worker).
            error = {"kind": "permanent", "message": f"claimed {attempts} times without finishing (more than "
                     f"retry.max_attempts = {self.settings.retry.max_attempts}); the message may crash the daemon"}
            log.error("job.dead", error=error["message"], kind="poison")
            self.outcomes.append(Outcome("bury", raw, job_id, result=failed_result(job_id, attempts, error),
                                         error=error, attempts=attempts, reply_to=reply_to_for_raw(raw)))
            return
        log.info("job.claimed", in_flight=len(self.in_flight) + 1, workers=self.workers)
        future = self._pool.submit(self._worker, item)
        self.in_flight[future] = item
        self._next["heartbeat"] = 0.0  # `clipper stats` shows in-flight jobs without delay
        future.add_done_callback(lambda _f: self.wake.set())

    def _collect_finished(self) -> None:
        for future in [f for f in self.in_flight if f.done()]:
            item = self.in_flight.pop(future)
            self._next["heartbeat"] = 0.0
            try:
                self.outcomes.append(future.result())
            except BaseException as exc:  # noqa: BLE001 - Worker catches everything; belt and braces
                self.log.error("job.worker_crashed", job_id=item.job_id, error=repr(exc))
                self.outcomes.append(Outcome("retry", item.raw, item.job_id, delay=1.0,
                                             error={"kind": "transient", "message": repr(exc)}))
                continue
            self._follow_output(self.outcomes[-1])

    def _follow_output(self, o: Outcome) -> None:
        """A circuit breaker on the output (S3 bucket or directory). An upload that failed for
        the output's sake pauses claiming, with backoff; after the pause one job at a time is
        let through as a probe, and the first that uploads closes the breaker. Items wait in
        Q:retry meanwhile, their attempts not used up: an outage loses nothing and kills no
        message, however long it lasts."""
        if o.output_down:
            now = time.monotonic()
            if now >= self.output_paused_until:  # a new trip; failures of jobs already in flight share it
                self.output_failures += 1
                r = self.settings.retry
                self.output_paused_until = now + backoff_delay(self.output_failures, r.backoff_base, r.backoff_max)
            o.delay = max(0.0, self.output_paused_until - now)
            self.log.error("output.unavailable", job_id=o.job_id, error=(o.error or {}).get("message"),
                           failures=self.output_failures, pause=round(o.delay, 3))
        elif o.kind == "ack" and self.output_failures:
            self.log.warning("output.back", job_id=o.job_id, failures=self.output_failures)
            self.output_failures = 0

    def _output_blocks_claim(self) -> bool:
        if not self.output_failures:
            return False
        return time.monotonic() < self.output_paused_until or bool(self.in_flight)

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
                self.log.error("job.record_failed", job_id=o.job_id, outcome=o.kind, error=str(exc))
                self.queue.bury_as_is(o.raw, o.job_id, f"cannot record the outcome ({o.kind}) in Redis: {exc}",
                                      o.attempts)
            self.outcomes.popleft()

    def _record(self, o: Outcome) -> None:
        reply = None
        if o.kind == "ack":
            reply = self.queue.ack(o.raw, o.job_id, o.result or {}, o.reply_to)
        elif o.kind == "retry":
            self.queue.retry_later(o.raw, o.job_id, o.delay, (o.error or {}).get("message", ""), uncount=o.uncount)
        elif o.kind == "bury":
            reply = self.queue.bury(o.raw, o.job_id, o.error or {}, o.attempts, o.result or {}, o.reply_to)
        else:
            self.queue.requeue(o.raw, o.job_id, uncount=o.uncount)
            self.log.info("job.requeued", job_id=o.job_id, reason=o.reason)
        if reply:
            self.deliveries.add(reply)

    def _maintain(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now >= self._next["heartbeat"]:
            self._heartbeat()
            self._next["heartbeat"] = now + self.settings.redis.heartbeat_ttl / 3
        if force or now >= self._next["promote"]:
            for job_id in self.queue.promote_due():
                self.log.info("job.requeued", job_id=job_id, reason="retry due")
            self._next["promote"] = now + 1.0
        if force or now >= self._next["reap"]:
            for consumer, job_ids in self.queue.reap().items():
                self.log.warning("queue.reaped", consumer=consumer, items=len(job_ids))
                for job_id in job_ids:
                    self.log.warning("job.requeued", job_id=job_id, reason=f"reaped from dead consumer {consumer}")
            self._requeue_orphans()
            self.deliveries.adopt_from_the_dead()
            self._next["reap"] = now + self.settings.redis.heartbeat_ttl / 2

    def _requeue_orphans(self) -> None:
        """Items in our processing list that no worker holds (a BLMOVE whose reply was lost)
        would otherwise wait there until our next start: give them back now."""
        held = [i.raw for i in self.in_flight.values()] + [o.raw for o in self.outcomes]
        for raw in self.queue.orphans(held):
            job_id = job_id_for_raw(raw)
            self.queue.requeue(raw, job_id, uncount=False)
            self.log.warning("job.requeued", job_id=job_id, reason="held by this daemon but by no worker")

    def _heartbeat(self) -> None:
        self.queue.heartbeat(self.settings.redis.heartbeat_ttl, {
            "pid": os.getpid(), "workers": self.workers, "in_flight": len(self.in_flight),
            "jobs": [i.job_id for i in self.in_flight.values()], "stopping": self.stopping, "at": round(time.time(), 3),
        })

    def _redis_trouble(self, exc: Exception) -> None:
        if self.redis_down_since is None:
            self.redis_down_since = time.monotonic()
            self.log.error("redis.unavailable", error=str(exc), pending_outcomes=len(self.outcomes))
        self._collect_finished()
        if self.stopping and self.deadline is not None and time.monotonic() >= self.deadline:
            self.cancel_in_flight()
        self.wake.wait(min(1.0, 0.1 + (time.monotonic() - self.redis_down_since) / 10))
        self.wake.clear()

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
                self.outcomes.append(Outcome("requeue", item.raw, item.job_id, uncount=True,
                                             reason="worker stuck past the deadline"))
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
        try:
            self.queue.leave()
        except redis.RedisError as exc:
            self.log.warning("redis.leave_failed", error=str(exc))
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.log.info("daemon.stopped", pid=os.getpid())
