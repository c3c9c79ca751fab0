"""The fate of an item: typed outcomes, the one retry/bury/poison policy, the output breaker.

A job runner says what happened to a job (`Ack`, `Requeue`, or a `Failure`); `RetryPolicy`
alone turns a failure into `Retry` or `Bury` and chooses the delay (backoff for the message's
own transient errors, the output breaker's pause for an outage), and decides that an item
claimed too often is poison. The loop only records what it is given.

This module knows settings and logs; it knows neither Redis nor media.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Literal

from clipper.settings import RetrySettings


@dataclass(frozen=True)
class Held:
    """An item in our processing list: its raw bytes, its job and the attempt it is on."""

    raw: bytes
    job_id: str
    attempts: int


@dataclass(frozen=True)
class Ack(Held):
    """The job finished: record its result and remove the item."""

    result: dict[str, Any]
    reply_to: str | None


@dataclass(frozen=True)
class Retry(Held):
    """Move the item to Q:retry, due in `delay` s; `uncount`: the attempt was not the message's fault."""

    delay: float
    error: dict[str, str]
    uncount: bool = False


@dataclass(frozen=True)
class Bury(Held):
    """Dead-letter the item and record the failed result."""

    error: dict[str, str]
    result: dict[str, Any]
    reply_to: str | None


@dataclass(frozen=True)
class Requeue(Held):
    """Put the item back at the consuming end of Q; `reason` is for the log."""

    reason: str
    uncount: bool = False


Outcome = Ack | Retry | Bury | Requeue


@dataclass(frozen=True)
class Failure(Held):
    """What a runner reports when a job did not finish; the policy decides what follows.
    `kind` "output": the output could not take the upload (not the message's fault)."""

    kind: Literal["permanent", "transient", "output"]
    message: str
    reply_to: str | None
    seconds: float


def backoff_delay(attempt: int, base: float, maximum: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter in its upper half: base * 2**(attempt-1), capped,
    then a random point between half of it and all of it (spreads a thundering herd)."""
    rng = rng or random
    ceiling = min(maximum, base * (2 ** min(max(0, attempt - 1), 60)))  # no float overflow, however long
    return ceiling / 2 + rng.random() * ceiling / 2


def failed_result(job_id: str, attempts: int, error: dict[str, str]) -> dict[str, Any]:
    return {"id": job_id, "status": "failed", "attempts": attempts, "outputs": [], "timings": {}, "error": error}


CANCELLED_MESSAGE = "cancelled on request (clipper cancel, Client.cancel); outputs already uploaded stay, no manifest"


def cancelled_result(job_id: str, attempts: int) -> dict[str, Any]:
    """A job stopped by `clipper cancel`: no outputs listed, and no manifest was written."""
    return {"id": job_id, "status": "cancelled", "attempts": attempts, "outputs": [], "timings": {},
            "error": {"kind": "cancelled", "message": CANCELLED_MESSAGE}}


class OutputBreaker:
    """A circuit breaker on the output (S3 bucket or directory). An upload that failed for the
    output's sake pauses claiming, with backoff; after the pause one job at a time is let
    through as a probe, and the first that uploads closes the breaker. Items wait in Q:retry
    meanwhile, their attempts not used up: an outage loses nothing and kills no message,
    however long it lasts."""

    def __init__(self, retry: RetrySettings):
        self.retry = retry
        self.failures = 0  # consecutive trips
        self.paused_until = 0.0

    def trip(self) -> float:
        """An upload failed for the output's sake: the seconds until claiming resumes."""
        now = time.monotonic()
        if now >= self.paused_until:  # a new trip; failures of jobs already in flight share it
            self.failures += 1
            self.paused_until = now + backoff_delay(self.failures, self.retry.backoff_base, self.retry.backoff_max)
        return max(0.0, self.paused_until - now)

    def close(self) -> int:
        """An upload went through: the failures it ends (0 when the breaker was closed)."""
        failures, self.failures = self.failures, 0
        return failures

    def state(self) -> str:
        """closed; open (claiming paused); half_open (the pause is over, one probe job at a time)."""
        if not self.failures:
            return "closed"
        return "open" if time.monotonic() < self.paused_until else "half_open"

    def blocks_claim(self, busy: bool) -> bool:
        """While open: no claim during the pause, then one probe job at a time."""
        if not self.failures:
            return False
        return time.monotonic() < self.paused_until or busy


class RetryPolicy:
    """Retry, bury or poison, and the delay: the one owner of an unfinished item's fate."""

    def __init__(self, retry: RetrySettings, breaker: OutputBreaker):
        self.retry = retry
        self.breaker = breaker

    def after_failure(self, f: Failure, log: Any) -> Retry | Bury:
        if f.kind == "output":
            return self._output_down(f, log)
        if f.kind == "transient" and f.attempts < self.retry.max_attempts:
            delay = backoff_delay(f.attempts, self.retry.backoff_base, self.retry.backoff_max)
            log.warning("job.retry", error=f.message, delay=round(delay, 3), seconds=f.seconds)
            return Retry(f.raw, f.job_id, f.attempts, delay, {"kind": "transient", "message": f.message})
        message = f.message
        if f.kind == "transient":
            message = f"gave up after {f.attempts} attempts (retry.max_attempts): {message}"
        log.error("job.dead", error=message, kind=f.kind, seconds=f.seconds)
        return self._bury(f.raw, f.job_id, f.attempts, {"kind": f.kind, "message": message}, f.reply_to)

    def _output_down(self, f: Failure, log: Any) -> Retry:
        """Not the message's fault: no attempt used up, the delay is the breaker's pause."""
        log.warning("job.retry", error=f.message, reason="output unavailable", seconds=f.seconds)
        delay = self.breaker.trip()
        log.error("output.unavailable", error=f.message, failures=self.breaker.failures, pause=round(delay, 3))
        return Retry(f.raw, f.job_id, f.attempts, delay, {"kind": "transient", "message": f.message}, uncount=True)

    def poison(self, raw: bytes, job_id: str, attempts: int, reply_to: str | None, log: Any) -> Bury | None:
        """An item claimed more often than retry.max_attempts without an outcome kills the
        daemon (or a worker): bury it before it runs again."""
        if attempts <= self.retry.max_attempts:
            return None
        error = {"kind": "permanent", "message": f"claimed {attempts} times without finishing (more than "
                 f"retry.max_attempts = {self.retry.max_attempts}); the message may crash the daemon"}
        log.error("job.dead", error=error["message"], kind="poison")
        return self._bury(raw, job_id, attempts, error, reply_to)

    @staticmethod
    def runner_crashed(raw: bytes, job_id: str, exc: BaseException) -> Retry:
        """The runner itself raised (it catches everything; belt and braces): try again soon."""
        return Retry(raw, job_id, 0, 1.0, {"kind": "transient", "message": repr(exc)})

    @staticmethod
    def _bury(raw: bytes, job_id: str, attempts: int, error: dict[str, str], reply_to: str | None) -> Bury:
        return Bury(raw, job_id, attempts, error, failed_result(job_id, attempts, error), reply_to)
