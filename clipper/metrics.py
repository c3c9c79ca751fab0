"""Prometheus metrics: what the daemon counts, and the HTTP endpoint that serves them.

One `Metrics` object owns a private registry (not prometheus_client's global one, so two
daemons in one test process never share counters). Counters and histograms move where the
loop records outcomes and where stages and subprocesses finish. What is true *now* (queue
depths, jobs in flight, Redis up, the output breaker) is read at scrape time by a custom
collector from callables the loop provides, so a scrape never shows a stale sample and this
module never learns a Redis key.

Names follow the Prometheus conventions: `clipper_` prefix, base units (seconds, bytes),
`_total` counters. Every label value comes from a small fixed set; anything else becomes
"other", so no job id, URL or key can ever reach a label.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from clipper import __version__

OUTCOMES = ("done", "retried", "requeued", "dead")
FAILURE_KINDS = ("permanent", "transient", "output")
STAGES = ("fetch", "probe", "clip", "thumbnails", "upload")
MODES = ("copy", "accurate", "smart")
FORMATS = ("mp4", "webm", "mkv", "gif", "m4a", "mp3")
PROGRAMS = ("ffmpeg", "ffprobe", "wget")
SUBPROCESS_REASONS = ("exit", "signal", "timeout", "cancelled")
QUEUE_STATES = ("pending", "processing", "retry", "dead")
BREAKER_STATES = ("closed", "open", "half_open")
OTHER = "other"

# a small clip takes ~0.3 s, a long re-encode most of an hour
JOB_BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf"))
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))


def bounded(value: str, allowed: Iterable[str]) -> str:
    """The label value itself when it is one of `allowed`, else "other"."""
    return value if value in allowed else OTHER


@dataclass(frozen=True)
class LiveSources:
    """What the loop knows right now, read at scrape time (from the HTTP server's thread)."""

    workers: int
    in_flight: Callable[[], int]
    breaker: Callable[[], str]
    queue_depths: Callable[[], dict[str, int]]  # raises when Redis does not answer


class _LiveCollector(Collector):
    def __init__(self, live: LiveSources):
        self.live = live

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("clipper_redis_up", "1 when Redis answered this scrape's queue reads, else 0")
        depths = GaugeMetricFamily("clipper_queue_items", "Items in the queue's lists, read from Redis at scrape time",
                                   labels=["state"])
        try:
            read = self.live.queue_depths()
        except Exception:  # noqa: BLE001 - any failure to read is "Redis down" for this scrape
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
            for state in QUEUE_STATES:
                depths.add_metric([state], read.get(state, 0))
        yield up
        yield depths
        yield GaugeMetricFamily("clipper_workers", "Worker threads of this daemon", value=self.live.workers)
        yield GaugeMetricFamily("clipper_jobs_in_flight", "Jobs this daemon is running now", value=self.live.in_flight())
        state = self.live.breaker()
        breaker = GaugeMetricFamily("clipper_output_breaker_state",
                                    "The output circuit breaker: 1 for its current state", labels=["state"])
        for name in BREAKER_STATES:
            breaker.add_metric([name], 1 if name == state else 0)
        yield breaker


class Metrics:
    """The daemon's counters and histograms, its registry, and (once `serve`d) its endpoint."""

    def __init__(self, live: LiveSources | None = None):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Info("clipper_build", "The running clipper version", registry=r).info({"version": __version__})
        self._jobs = Counter("clipper_jobs", "Recorded job attempts by outcome (done, retried, requeued, dead)",
                             ["outcome"], registry=r)
        self._failures = Counter("clipper_job_failures", "Job attempts that ended in an error, by kind "
                                 "(permanent, transient, output: the output could not take the upload)", ["kind"], registry=r)
        self._job_seconds = Histogram("clipper_job_duration_seconds", "Wall time of job attempts, by outcome",
                                      ["outcome"], buckets=JOB_BUCKETS, registry=r)
        self._stage_seconds = Histogram("clipper_stage_duration_seconds", "Wall time of pipeline stages",
                                        ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self._clips = Counter("clipper_clips", "Clips made, by the mode actually used and the format",
                              ["mode", "format"], registry=r)
        self._fetched = Counter("clipper_fetched_bytes", "Bytes of source media fetched", registry=r)
        self._uploaded = Counter("clipper_uploaded_bytes", "Bytes of outputs uploaded (manifests included)", registry=r)
        self._subprocess = Counter("clipper_subprocess_failures", "ffmpeg/ffprobe/wget runs that failed: non-zero "
                                   "exit, killed by a signal, killed on timeout or cancelled by shutdown",
                                   ["program", "reason"], registry=r)
        for outcome in OUTCOMES:  # present from the first scrape, so rate() sees the first increment
            self._jobs.labels(outcome)
        for kind in FAILURE_KINDS:
            self._failures.labels(kind)
        if live is not None:
            r.register(_LiveCollector(live))
        self._totals_lock = threading.Lock()
        self._totals: collections.Counter[str] = collections.Counter()
        self._recent: collections.deque[tuple[float, str]] = collections.deque()  # (monotonic, outcome) of the last minute
        self._server: Any = None

    # -- what happened -------------------------------------------------------------------------
    def job_finished(self, outcome: str, seconds: float | None = None) -> None:
        """One recorded outcome; `seconds`: the attempt's wall time when it ran."""
        outcome = bounded(outcome, OUTCOMES)
        self._jobs.labels(outcome).inc()
        if seconds is not None:
            self._job_seconds.labels(outcome).observe(max(0.0, seconds))
        with self._totals_lock:
            self._totals[outcome] += 1
            if outcome in ("done", "dead"):
                self._recent.append((time.monotonic(), outcome))

    def job_failed(self, kind: str) -> None:
        self._failures.labels(bounded(kind, FAILURE_KINDS)).inc()

    def stage_finished(self, stage: str, seconds: float) -> None:
        self._stage_seconds.labels(bounded(stage, STAGES)).observe(max(0.0, seconds))

    def clip_made(self, mode: str, fmt: str) -> None:
        self._clips.labels(bounded(mode, MODES), bounded(fmt, FORMATS)).inc()

    def fetched(self, n: int) -> None:
        self._fetched.inc(max(0, n))

    def uploaded(self, n: int) -> None:
        self._uploaded.inc(max(0, n))

    def subprocess_failed(self, program: str, reason: str) -> None:
        name = program.rsplit("/", 1)[-1]
        self._subprocess.labels(bounded(name, PROGRAMS), bounded(reason, SUBPROCESS_REASONS)).inc()

    def totals(self) -> dict[str, int]:
        """Since start, for the heartbeat: done, failed (dead-lettered), retried."""
        with self._totals_lock:
            return {"done": self._totals["done"], "failed": self._totals["dead"], "retried": self._totals["retried"]}

    def last_minute(self, now: float | None = None) -> dict[str, int]:
        """Jobs done and failed in the last 60 s (the live view's throughput)."""
        now = time.monotonic() if now is None else now
        with self._totals_lock:
            while self._recent and self._recent[0][0] < now - 60:
                self._recent.popleft()
            outcomes = collections.Counter(outcome for _, outcome in self._recent)
        return {"done": outcomes["done"], "failed": outcomes["dead"]}

    # -- the endpoint --------------------------------------------------------------------------
    def serve(self, address: str, port: int) -> None:
        """Serve /metrics on a daemon thread; OSError (e.g. the port is taken) propagates."""
        from prometheus_client import start_http_server

        self._server, _thread = start_http_server(port, addr=address, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def text(self) -> str:
        """The exposition text, as a scrape would get it."""
        return generate_latest(self.registry).decode()
