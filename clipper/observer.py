"""What the loop shows ops: Prometheus metrics, each running job's progress in its record, and
what the heartbeat says beyond "alive" (counters since start, the last minute, when each
in-flight job last moved).

The loop tells the `Observer` when a job is claimed, collected and recorded; job runners on
pool threads call `progress` (the callable the loop hands them), which writes the job's record
through the queue at most about once a second, by way of the `ProgressWriter`'s thread (a pool
thread never waits on Redis for it). Counts move only once an outcome is recorded in Redis, so
a scrape never runs ahead of the queue.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from clipper import health
from clipper.daemon import CannotStart
from clipper.jobs.upload import make_uploader
from clipper.media.progress import REPORT_EVERY
from clipper.metrics import LiveSources, Metrics
from clipper.policy import Ack, Bury, Outcome, Requeue, Retry
from clipper.queue import ReliableQueue
from clipper.settings import Settings

WRITE_GAP = 0.2  # seconds a progress write waits for the job's next report (which replaces it)
FLUSH_WAIT = 2.0  # seconds the main thread waits at most for a job's progress write in flight


Report = tuple[str, float | None, float | None]  # stage, percent, eta


def merged(older: Report | None, newer: Report) -> Report:
    """One report for two: the newer stage and eta, the last percent known (set_progress leaves
    the percent as it was when given none, so the record ends the same)."""
    stage, percent, eta = newer
    return (stage, older[1] if percent is None and older is not None else percent, eta)


class ProgressWriter:
    """Writes running jobs' progress from one thread. A job's report waits at most WRITE_GAP;
    reports that come meanwhile replace it (`merged`), so the six stage changes of a 0.1 s job
    cost one or two writes instead of six, each two round trips that an `appendfsync always`
    Redis fsyncs (issue 8), and a pool thread never waits on Redis for progress. `flush(job_id)`,
    from the main thread before it records the job's outcome, takes the job's report out of
    the queue (or the batch being written) and writes it at once, after any write of it in
    flight: a progress write never lands after the outcome. `write` never raises."""

    def __init__(self, write: Callable[[str, str, float | None, float | None], None]):
        self._write = write
        self._cond = threading.Condition()
        self._pending: dict[str, Report] = {}  # reports waiting for the next batch
        self._batch: dict[str, Report] = {}  # the batch being written, what is left of it
        self._writing: str | None = None  # the job whose report is being written now
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="progress-writer", daemon=True)
        self._thread.start()

    def put(self, job_id: str, stage: str, percent: float | None, eta: float | None) -> None:
        with self._cond:
            self._pending[job_id] = merged(self._pending.get(job_id), (stage, percent, eta))
            self._cond.notify_all()

    def flush(self, job_id: str) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._writing != job_id, FLUSH_WAIT)
            older, newer = self._batch.pop(job_id, None), self._pending.pop(job_id, None)
        report = merged(older, newer) if newer is not None else older
        if report is not None:
            self._write(job_id, *report)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closed)
                if self._closed:
                    return
            time.sleep(WRITE_GAP)  # the job's next reports replace this one meanwhile
            with self._cond:
                self._batch, self._pending = self._pending, {}
            while True:
                with self._cond:
                    if not self._batch:
                        break
                    job_id = next(iter(self._batch))
                    report = self._batch.pop(job_id)
                    self._writing = job_id
                try:
                    self._write(job_id, *report)
                finally:
                    with self._cond:
                        self._writing = None
                        self._cond.notify_all()


class Observer:
    def __init__(self, settings: Settings, queue: ReliableQueue, workers: int, *, in_flight: Callable[[], int],
                 breaker: Callable[[], str]):
        self.settings = settings
        self.queue = queue
        self.log: Any = None
        self.metrics = Metrics(LiveSources(workers=workers, in_flight=in_flight, breaker=breaker,
                                           queue_depths=queue.depths))
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}  # job id -> monotonic claim time
        self._seconds: dict[str, float] = {}  # job id -> how long its attempt ran (collected, not yet recorded)
        self._progress_at: dict[str, float] = {}  # job id -> wall time of its last sign of progress
        self._reported: dict[str, tuple[str, float]] = {}  # job id -> (stage, when) last sent to Redis
        self.writer = ProgressWriter(self._write_progress)

    # -- start and end of the daemon --------------------------------------------------------------
    def start(self, log: Any) -> None:
        """At start: say whether the output takes a write (a warning: jobs wait for it anyway),
        and serve /metrics when enabled (a taken port fails the start, naming the settings)."""
        self.log = log
        problem = health.output_problem(make_uploader(self.settings.output, quick=True))
        if problem:
            log.warning("output.unwritable", reason=problem)
        m = self.settings.metrics
        if not m.enabled:
            return
        try:
            self.metrics.serve(m.address, m.port)
        except OSError as exc:
            raise CannotStart(f"cannot serve metrics on {m.address}:{m.port}: {exc.strerror or exc} "
                              "(metrics.address, metrics.port, metrics.enabled)") from None
        log.info("metrics.serving", address=m.address, port=m.port)

    def close(self) -> None:
        self.writer.close()
        self.metrics.close()

    # -- a job's life, as the main thread sees it ------------------------------------------------
    def claimed(self, job_id: str) -> None:
        with self._lock:
            self._started[job_id] = time.monotonic()
            self._progress_at[job_id] = time.time()

    def collected(self, job_id: str) -> None:
        """Its runner returned: the attempt's time is known, its progress is over (and in Redis
        before its outcome is)."""
        self.writer.flush(job_id)
        with self._lock:
            started = self._started.pop(job_id, None)
            if started is not None:
                self._seconds[job_id] = time.monotonic() - started
            self._progress_at.pop(job_id, None)
            self._reported.pop(job_id, None)

    def recorded(self, o: Outcome, *, dead: bool = False) -> None:
        """An outcome is in Redis (`dead`: the item was dead-lettered as it is, its record
        could not be written): count it, and the failure that led to it."""
        with self._lock:
            seconds = self._seconds.pop(o.job_id, None)
        outcome, failure = ("dead", None) if dead else _counted_as(o)
        self.metrics.job_finished(outcome, seconds)
        if failure:
            self.metrics.job_failed(failure)

    # -- from pool threads -----------------------------------------------------------------------
    def progress(self, job_id: str, stage: str, percent: float | None, eta: float | None) -> None:
        """Every call is a sign of life (health: not stuck); Redis hears of a new stage or a
        new percent, and of a long fetch's bytes once a second."""
        now = time.time()
        with self._lock:
            self._progress_at[job_id] = now
            last = self._reported.get(job_id)
            if percent is None and last is not None and last[0] == stage and now - last[1] < REPORT_EVERY:
                return
            if last is None and percent is None:
                percent = 0.0  # a retried job's record still holds the last attempt's percent
            self._reported[job_id] = (stage, now)
        self.writer.put(job_id, stage, percent, eta)

    def _write_progress(self, job_id: str, stage: str, percent: float | None, eta: float | None) -> None:
        try:
            self.queue.set_progress(job_id, stage, percent, eta)
        except (redis.RedisError, redis.exceptions.RedisClusterException):
            pass  # progress is informative; the outcome is what must not be lost

    # -- the heartbeat ---------------------------------------------------------------------------
    def heartbeat_fields(self) -> dict[str, Any]:
        with self._lock:
            progress_at = {job: round(at, 3) for job, at in self._progress_at.items()}
        return {"counters": self.metrics.totals(), "last_minute": self.metrics.last_minute(), "progress_at": progress_at}


def _counted_as(o: Outcome) -> tuple[str, str | None]:
    """(outcome, kind of the failure or None) as the metrics name them."""
    if isinstance(o, Ack):
        return "done", None
    if isinstance(o, Retry):  # not counted against the message only when the output was down
        return "retried", "output" if o.uncount else o.error.get("kind", "transient")
    if isinstance(o, Bury):
        return "dead", o.error.get("kind", "permanent")
    assert isinstance(o, Requeue)
    return "requeued", None
