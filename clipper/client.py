"""The Python producer's side of the queue: submit a message, wait for its result, read its
status, cancel it. `clipper enqueue` and `clipper cancel` use it too.

    from clipper.client import Client
    client = Client.from_url("redis://127.0.0.1:6379/0")          # or Client.from_settings("prod")
    job_id = client.submit({"source": "https://cdn.example.com/v.mp4", "clips": [...]})
    result = client.result(job_id, timeout=600)                    # None when the timeout passes

A message is checked as the daemon would check it before it is pushed (the same parser and
source policy, with the settings given), so a bad one raises `InvalidMessage` instead of
ending in the dead-letter list. Waiting for a result subscribes to `Q:events` and then reads
`Q:job:<id>` once, so a result recorded between the two is not missed and nothing polls.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from clipper.cancel import Canceller, CancelOutcome
from clipper.connections import connect_redis
from clipper.errors import PermanentError
from clipper.keys import Keys
from clipper.queue import ReliableQueue
from clipper.settings import FetchSettings, MediaSettings, RedisSettings, Settings, load_settings

FINISHED = frozenset({"done", "failed", "cancelled"})


class InvalidMessage(PermanentError):
    """The message would be dead-lettered by the daemon; the text names the problem."""


@dataclass(frozen=True)
class JobStatus:
    """One job's record (`Q:job:<id>`): `status` is queued, running, retrying, done, failed or
    cancelled; `result` is set once it is finished."""

    id: str
    status: str
    attempts: int
    progress: str | None
    result: dict[str, Any] | None
    record: dict[str, str]

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class Client:
    """A producer's handle on one queue (`redis.queue`); thread-safe like a redis-py client."""

    def __init__(self, client: redis.Redis, *, queue: str = "clipper:jobs", media: MediaSettings | None = None,
                 fetch: FetchSettings | None = None, result_ttl: int = 7 * 24 * 3600):
        from clipper.jobs.spec import job_id_for_raw, reply_to_for_raw
        from clipper.policy import cancelled_result

        self.r = client
        self.keys = Keys(queue)
        self.media = media or MediaSettings()
        self.fetch = fetch or FetchSettings()
        # the consumer name is never used: a producer holds nothing
        self._canceller = Canceller(ReliableQueue(client, queue, "producer", job_id_of=job_id_for_raw, result_ttl=result_ttl),
                                    cancelled_result, lambda raw: reply_to_for_raw(raw, queue))

    @classmethod
    def from_settings(cls, settings: Settings | str) -> Client:
        """From a Settings object or the name of an ENV (`settings/ENV.toml`, as the command does)."""
        if isinstance(settings, str):
            settings = load_settings(settings)
        return cls(connect_redis(settings.redis), queue=settings.redis.queue, media=settings.media, fetch=settings.fetch,
                   result_ttl=settings.results.ttl)

    @classmethod
    def from_url(cls, url: str, *, queue: str = "clipper:jobs", media: MediaSettings | None = None,
                 fetch: FetchSettings | None = None, result_ttl: int = 7 * 24 * 3600) -> Client:
        """`media`/`fetch`: the daemon's settings, when they differ from the defaults (e.g. private
        sources allowed), so that checks here match the daemon's; `result_ttl`: its results.ttl
        (how long the record of a job cancelled here is kept)."""
        return cls(connect_redis(RedisSettings(url=url, queue=queue)), queue=queue, media=media, fetch=fetch,
                   result_ttl=result_ttl)

    def close(self) -> None:
        self.r.close()

    # -- producing ------------------------------------------------------------------------------
    def check(self, message: Mapping[str, Any] | str | bytes) -> tuple[bytes, str, str]:
        """The raw item, job id and priority of a message, or InvalidMessage naming the problem."""
        from clipper.jobs.fetch import check_source_policy
        from clipper.jobs.spec import parse_message

        raw = json.dumps(dict(message)).encode() if isinstance(message, Mapping) else message
        raw = (raw.encode() if isinstance(raw, str) else raw).strip()
        try:
            spec = parse_message(raw, self.media, self.keys.queue)
            check_source_policy(spec.source, self.fetch)  # what the daemon would refuse without fetching
        except PermanentError as exc:
            reason = str(exc)
            raise InvalidMessage(reason if reason.startswith("invalid message") else f"invalid message: {reason}") from None
        return raw, spec.id, spec.priority

    def submit(self, message: Mapping[str, Any] | str | bytes) -> str:
        """Check the message and LPUSH it; returns its job id. A high-priority message goes to the
        high lane (`Q:high`) at once."""
        raw, job_id, priority = self.check(message)
        self.r.lpush(self.keys.high if priority == "high" else self.keys.queue, raw)
        return job_id

    def cancel(self, job_id: str) -> CancelOutcome:
        """Cancel a job: "cancelled" (it was queued or retrying: finished now), "cancelling" (a
        daemon runs it: killed within a second, nothing more uploaded, then `cancelled`),
        "done"/"failed" (already finished: left as it is), or "unknown"."""
        return self._canceller.cancel(job_id)

    # -- following a job ------------------------------------------------------------------------
    def status(self, job_id: str) -> JobStatus | None:
        """The job's record, or None when there is none (never claimed yet, or expired)."""
        record = {k.decode(): v.decode("utf-8", "replace") for k, v in self.r.hgetall(self.keys.job(job_id)).items()}
        if not record.get("status"):
            return None
        result = json.loads(record["result"]) if record.get("result") and record["status"] in FINISHED else None
        return JobStatus(job_id, record["status"], int(record.get("attempts") or 0), record.get("progress"), result,
                         record)

    def result(self, job_id: str, timeout: float | None = None) -> dict[str, Any] | None:
        """Wait for the job to finish (done, failed or cancelled) and return its result; None when
        `timeout` seconds pass first. Blocks on the events channel; does not poll."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pubsub = self.r.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.keys.events)
            # subscribed first, read second: a result recorded in between is in the record
            current = self.status(job_id)
            if current is not None and current.result is not None:
                return current.result
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                event = pubsub.get_message(timeout=1.0 if left is None else min(left, 1.0))
                found = self._finished_event(event, job_id)
                if found is not None:
                    return found
        finally:
            pubsub.close()

    @staticmethod
    def _finished_event(event: dict[str, Any] | None, job_id: str) -> dict[str, Any] | None:
        if not event or event.get("type") != "message":
            return None
        try:
            data = json.loads(event["data"])
        except (TypeError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("id") != job_id or data.get("status") not in FINISHED:
            return None
        data.pop("at", None)  # the event is the result plus when it was published
        return data
