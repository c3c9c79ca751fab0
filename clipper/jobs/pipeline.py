"""One job, stage by stage: fetch -> probe -> clips -> thumbnails -> upload (+ manifest).

The source is opened once per job (clipper.sources: a local file read in place, or a remote
source read through the shared cache, fetching only the ranges ffmpeg reads) and every clip
and thumbnail reads it; an output the cache already holds for this source version is reused.
Every output was verified with ffprobe by its stage; here it gets its key, size and digest,
and is uploaded; `manifest.json` goes last, so its presence means the set is complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipper.errors import PermanentError, TransientError
from clipper.jobs.clip import EXTENSIONS as CLIP_EXTENSIONS
from clipper.jobs.clip import ClipResult, check_streams, make_clip, resolve_range
from clipper.jobs.copies import batchable, make_copy_clips
from clipper.jobs.probe import MediaInfo, check_source_limits
from clipper.jobs.spec import ClipSpec, JobSpec, ThumbSpec, redact_url
from clipper.jobs.thumbs import EXTENSIONS as THUMB_EXTENSIONS
from clipper.jobs.thumbs import check_thumbnail, make_thumbnail
from clipper.jobs.upload import Uploader
from clipper.media.command import ChildLimits, JobControl
from clipper.media.progress import THUMBNAIL_WEIGHT, JobProgress
from clipper.metrics import Metrics
from clipper.settings import Settings
from clipper.sources.outputs import output_key, reuse_or_make
from clipper.sources.session import SourceCache, SourceSession, explain_failure, open_source

# (stage, percent done of the job or None, seconds left or None): the loop's way to the job's record
ProgressCallback = Callable[[str, float | None, float | None], None]


@dataclass
class JobContext:
    settings: Settings
    uploader: Uploader
    control: JobControl
    scratch: Path
    progress: ProgressCallback
    log: Any
    sources: SourceCache
    metrics: Metrics


@dataclass(frozen=True)
class LocalOutput:
    name: str
    kind: str  # "clip" | "thumbnail"
    path: Path
    format: str
    duration: float | None
    width: int | None
    height: int | None
    mode: str | None = None
    note: str | None = None
    reused: bool = False  # kept by the cache from an earlier job (clipper.sources.outputs)


def check_against_media(spec: JobSpec, info: MediaInfo, max_dimension: int | None = None) -> list[float]:
    """Fail before any work when one of the outputs cannot be made from this media (the same
    checks each stage makes, so a bad last clip does not cost the encodes before it). Returns
    each output's share of the work, for progress: clips their seconds, then the thumbnails."""
    weights = []
    for clip in spec.clips:
        weights.append(resolve_range(clip, info).duration)
        check_streams(clip, info)
    for thumb in spec.thumbnails:
        check_thumbnail(thumb, info, max_dimension=max_dimension)
        weights.append(THUMBNAIL_WEIGHT)
    return weights


def check_owner(spec: JobSpec, uploader: Uploader, base: str) -> None:
    """A job never overwrites another job's outputs: the prefix must hold no manifest, or one
    this job id wrote (a redelivery overwrites its own, so at-least-once stays idempotent)."""
    owner = uploader.owner(f"{base}/manifest.json")
    if owner is None or owner == spec.id:
        return
    whose = f"job {owner!r}" if owner else "something that is not a clipper manifest"
    raise PermanentError(f"output prefix {base!r} already holds the outputs of {whose} (its manifest.json); a job "
                         "never overwrites another job's outputs: give this one another output_prefix")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1024 * 1024), b""):
            h.update(block)
    return h.hexdigest()


def output_record(out: LocalOutput, key: str) -> dict[str, Any]:
    """What the result and the manifest say of one uploaded output."""
    record: dict[str, Any] = {"name": out.name, "kind": out.kind, "key": key, "bytes": out.path.stat().st_size,
                              "sha256": _sha256(out.path), "format": out.format,
                              "duration": round(out.duration, 3) if out.duration is not None else None,
                              "width": out.width, "height": out.height}
    if out.mode:
        record["mode"] = out.mode
    if out.note:
        record["note"] = out.note
    if out.reused:
        record["reused"] = True
    return record


Stage = Callable[..., AbstractContextManager[None]]


def make_outputs(spec: JobSpec, ctx: JobContext, session: SourceSession, info: MediaInfo, out_dir: Path,
                 stage: Stage, tracker: JobProgress, weights: Iterator[float]) -> list[LocalOutput]:
    """Every clip, then every thumbnail, made from the source (or reused) and verified, in
    `out_dir`; ffmpeg's reports move the job's progress while each is made."""
    out_dir.mkdir()
    local: list[LocalOutput] = []
    try:
        if spec.clips:
            with stage("clip", clips=len(spec.clips)):
                clip_weights = [next(weights) for _ in spec.clips]
                premade = _cut_copies(ctx, session, spec.clips, clip_weights, info, out_dir, tracker)
                for clip, weight in zip(spec.clips, clip_weights, strict=True):
                    if clip.name not in premade:
                        tracker.begin("clip", weight)
                        ctx.control.progress = tracker.ffmpeg
                    local.append(_output(ctx, session, clip, info, out_dir, premade))
                    if clip.name not in premade:
                        tracker.finish()
                    ctx.metrics.clip_made(local[-1].mode or clip.mode, clip.format)
        if spec.thumbnails:
            with stage("thumbnails", thumbnails=len(spec.thumbnails)):
                for thumb in spec.thumbnails:
                    tracker.begin("thumbnails", next(weights))
                    ctx.control.progress = None  # one frame: nothing to report on the way
                    local.append(_output(ctx, session, thumb, info, out_dir, {}))
                    tracker.finish()
    finally:
        ctx.control.progress = None
    return local


class StageTimer:
    """`with stage("clip"):` checks for cancellation, tells the job's progress which stage runs,
    and adds the stage's wall time to `timings`, the metrics and the debug log."""

    def __init__(self, ctx: JobContext):
        self.ctx = ctx
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, **fields: Any) -> Iterator[None]:
        self.ctx.control.check()
        self.ctx.progress(name, None, None)
        t0 = time.monotonic()
        yield
        seconds = time.monotonic() - t0
        self.timings[name] = round(self.timings.get(name, 0.0) + seconds, 3)
        self.ctx.metrics.stage_finished(name, seconds)
        self.ctx.log.debug("job.stage", stage=name, seconds=round(seconds, 3), **fields)


def run_job(spec: JobSpec, ctx: JobContext, attempts: int) -> dict[str, Any]:
    settings = ctx.settings
    started = time.monotonic()
    stage = StageTimer(ctx)
    timings = stage.timings
    base = spec.output_dir_key(settings.output.prefix)
    check_owner(spec, ctx.uploader, base)  # before any work
    ctx.control.limits = ChildLimits.from_settings(settings.media)
    workdir = ctx.scratch / f"{spec.id}-{uuid.uuid4().hex[:8]}"
    workdir.mkdir(parents=True)
    session: SourceSession | None = None
    try:
        with stage("fetch", source=redact_url(spec.source)):
            session = open_source(spec.source, ctx.sources, workdir, ctx.control)
        # the budget bounds the media work; fetching has its own timeouts (fetch.timeout)
        ctx.control.start_budget(settings.media.job_timeout)
        with stage("probe"):
            info = session.probe(ctx.control, settings.media.max_source_pixels)
            check_source_limits(info, settings.media, "probe of the source")
            weights = check_against_media(spec, info, settings.media.max_dimension)
        tracker = JobProgress(weights, lambda r: ctx.progress(r.stage, r.percent, r.eta))
        local = make_outputs(spec, ctx, session, info, workdir / "out", stage, tracker, iter(weights))
        ctx.control.stop_budget()
        check_owner(spec, ctx.uploader, base)  # another job may have finished meanwhile
        with stage("upload", outputs=len(local)):
            outputs = upload_outputs(spec, ctx, local, base)
        # The manifest goes last, so its presence means the set is complete; it carries the same
        # timings as the result (its own small upload is not counted in either).
        timings["total"] = round(time.monotonic() - started, 3)
        source = {"url": redact_url(spec.source), "duration": round(info.duration, 3), "format": info.format_name,
                  "codecs": info.codecs, **session.stats()}
        manifest_key = _upload_manifest(spec, ctx, workdir, f"{base}/manifest.json",
                                        {"id": spec.id, "source": source, "outputs": outputs, "timings": timings,
                                         "created_at": round(time.time(), 3)})
        return {"id": spec.id, "status": "done", "attempts": attempts, "outputs": outputs,
                "manifest": manifest_key, "source": session.stats(), "timings": timings, "error": None}
    except (PermanentError, TransientError) as exc:
        better = explain_failure(session, exc)
        if better is exc:
            raise
        raise better from None
    finally:
        if session is not None:
            ctx.metrics.fetched(session.stats()["bytes_from_origin"])
            session.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _cut_copies(ctx: JobContext, session: SourceSession, clips: list[ClipSpec], weights: list[float],
                info: MediaInfo, out_dir: Path, tracker: JobProgress) -> dict[str, LocalOutput]:
    """The job's plain copy clips that the cache does not hold, cut by one ffmpeg when there are
    two or more (clipper.jobs.copies: one process start instead of one per clip), by name."""
    batch = [(c, w) for c, w in zip(clips, weights, strict=True) if batchable(c, info) and not _kept(ctx, session, c)]
    if len(batch) < 2:
        return {}
    tracker.begin("clip", sum(w for _, w in batch))
    ctx.control.progress = tracker.ffmpeg
    made = make_copy_clips(session.input, info, [c for c, _ in batch], out_dir, ctx.settings.media,
                           control=ctx.control, timeout=ctx.settings.media.stage_timeout)
    tracker.finish()
    return {c.name: _clip_output(c, made[c.name]) for c, _ in batch}


def _kept(ctx: JobContext, session: SourceSession, spec: ClipSpec) -> bool:
    """Whether the output cache holds this clip now (it is then reused, not cut again)."""
    if session.version_key is None or ctx.settings.cache.output_max_bytes <= 0:
        return False
    entry = ctx.sources.outputs.entry_dir(output_key(session.version_key, spec, ctx.settings.media))
    return (entry / "meta.json").is_file() and (entry / "output").is_file()


def _clip_output(spec: ClipSpec, r: ClipResult) -> LocalOutput:
    v = r.info.video
    return LocalOutput(spec.name, "clip", r.path, spec.format, r.info.duration, v.width if v else None,
                       v.height if v else None, r.mode, r.note)


def _make(ctx: JobContext, src: Path | str, spec: ClipSpec | ThumbSpec, info: MediaInfo, out_dir: Path) -> LocalOutput:
    timeout = ctx.settings.media.stage_timeout
    threads = ctx.settings.workers.ffmpeg_threads
    if isinstance(spec, ClipSpec):
        r = make_clip(src, info, spec, out_dir, ctx.settings.media, threads=threads, control=ctx.control,
                      timeout=timeout)
        return _clip_output(spec, r)
    t = make_thumbnail(src, info, spec, out_dir, control=ctx.control, timeout=timeout, threads=threads)
    return LocalOutput(spec.name, "thumbnail", t.path, t.format, None, t.width, t.height)


def _output(ctx: JobContext, session: SourceSession, spec: ClipSpec | ThumbSpec, info: MediaInfo,
            out_dir: Path, premade: dict[str, LocalOutput]) -> LocalOutput:
    """One clip or thumbnail: reused from the cache when it holds it for this source version,
    else the one `_cut_copies` made, else made now."""
    def make_one() -> LocalOutput:
        return premade.get(spec.name) or _make(ctx, session.input, spec, info, out_dir)

    if session.version_key is None or ctx.settings.cache.output_max_bytes <= 0:
        return make_one()

    def make() -> tuple[Path, dict[str, Any]]:
        out = make_one()
        return out.path, {k: v for k, v in dataclasses.asdict(out).items() if k not in ("name", "path", "reused")}

    made = _make_name(spec, out_dir)
    key = output_key(session.version_key, spec, ctx.settings.media)
    path, record, reused = reuse_or_make(ctx.sources.outputs, key, made, make, ctx.control)
    return LocalOutput(spec.name, path=path, reused=reused, **record)


def _make_name(spec: ClipSpec | ThumbSpec, out_dir: Path) -> Path:
    """Where the stage would write this output (its name and the format's extension)."""
    ext = CLIP_EXTENSIONS[spec.format] if isinstance(spec, ClipSpec) else THUMB_EXTENSIONS[spec.format]
    return out_dir / f"{spec.name}.{ext}"

def upload_outputs(spec: JobSpec, ctx: JobContext, local: list[LocalOutput], base: str) -> list[dict[str, Any]]:
    """Upload each output under `base`; what the result and the manifest say of them."""
    outputs: list[dict[str, Any]] = []
    for out in local:
        key = f"{base}/{out.path.name}"
        ctx.control.check()
        ctx.uploader.upload(out.path, key, {"job-id": spec.id, "name": out.name, "kind": out.kind})
        outputs.append(output_record(out, key))
        ctx.metrics.uploaded(outputs[-1]["bytes"])
    return outputs


def _upload_manifest(spec: JobSpec, ctx: JobContext, workdir: Path, key: str, manifest: dict[str, Any]) -> str:
    path = workdir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    ctx.control.check()
    ctx.uploader.upload(path, key, {"job-id": spec.id, "kind": "manifest"})
    ctx.metrics.uploaded(path.stat().st_size)
    return key
