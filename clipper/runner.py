"""Runs one job on a pool thread and reports how it ended.

The runner turns the pipeline's exceptions into a report: `Ack` (done, or cancelled on request),
`Requeue` (cancelled by our own shutdown) or a `Failure` whose fate the retry policy decides on the main thread. It
knows neither Redis nor the queue: progress goes through the callable it is given.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipper import logs
from clipper.errors import Cancelled, OutputUnavailable, PermanentError, TransientError
from clipper.jobs.pipeline import JobContext, run_job
from clipper.jobs.spec import JobSpec, parse_message, reply_to_for_raw
from clipper.jobs.upload import make_uploader
from clipper.media.command import JobControl
from clipper.metrics import Metrics
from clipper.policy import Ack, Failure, Held, Requeue, cancelled_result
from clipper.settings import Settings
from clipper.sources.session import SourceCache


@dataclass(frozen=True)
class InFlight(Held):
    """An item a pool thread is working on, with the control that cancels it."""

    control: JobControl


class JobRunner:
    """Runs one job and says how it ended; never raises for the job's sake."""

    def __init__(self, settings: Settings, scratch: Path, progress: Callable[[str, str, float | None, float | None], None],
                 metrics: Metrics):
        self.settings = settings
        self.scratch = scratch
        self.progress = progress  # (job_id, stage, percent, eta): informative, must not fail the job
        self.metrics = metrics
        self.uploader = make_uploader(settings.output)
        self.sources = SourceCache(settings)  # one per daemon: its write accounting drives eviction

    def __call__(self, item: InFlight) -> Ack | Requeue | Failure:
        log = logs.get_logger(env=self.settings.env, job_id=item.job_id, attempt=item.attempts)
        spec: JobSpec | None = None
        started = time.monotonic()
        item.control.finished = lambda program, status, seconds, peak: log.debug(
            "subprocess.finished", program=program, exit=status, seconds=seconds, max_rss_bytes=peak)

        def failure(kind: Any, message: str) -> Failure:
            # a message refused before it became a job still tells its producer
            reply_to = spec.reply_to if spec else reply_to_for_raw(item.raw, self.settings.redis.queue)
            return Failure(item.raw, item.job_id, item.attempts, kind, logs.public(message), reply_to,
                           round(time.monotonic() - started, 3))

        try:
            spec = parse_message(item.raw, self.settings.media, self.settings.redis.queue)
            ctx = JobContext(settings=self.settings, uploader=self.uploader, control=item.control, scratch=self.scratch,
                             progress=lambda stage, percent, eta: self.progress(item.job_id, stage, percent, eta),
                             log=log, metrics=self.metrics, sources=self.sources)
            result = run_job(spec, ctx, item.attempts)
            log.info("job.done", seconds=round(time.monotonic() - started, 3), outputs=len(result["outputs"]),
                     timings=result["timings"])
            return Ack(item.raw, item.job_id, item.attempts, result, spec.reply_to)
        except Cancelled:
            log.warning("job.cancelled", seconds=round(time.monotonic() - started, 3), reason=item.control.reason)
            if item.control.reason == "request":  # clipper cancel: finished, nothing more uploaded
                return Ack(item.raw, item.job_id, item.attempts, cancelled_result(item.job_id, item.attempts),
                           spec.reply_to if spec else None)
            return Requeue(item.raw, item.job_id, item.attempts, "cancelled at the stop deadline", uncount=True)
        except OutputUnavailable as exc:
            return failure("output", str(exc))
        except PermanentError as exc:
            return failure("permanent", str(exc))
        except TransientError as exc:
            return failure("transient", str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must not kill the daemon or lose the item
            log.exception("job.internal_error")
            return failure("transient", f"internal error: {type(exc).__name__}: {exc}")
