"""One job, stage by stage: fetch -> probe -> clips -> thumbnails -> upload (+ manifest).

The source is fetched once per job and every clip and thumbnail reads that local copy.
Every output was verified with ffprobe by its stage; here it gets its key, size and digest,
and is uploaded; `manifest.json` goes last, so its presence means the set is complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipper.jobs.clip import check_streams, make_clip, resolve_range
from clipper.jobs.fetch import fetch_source
from clipper.jobs.probe import MediaInfo, probe_media
from clipper.jobs.spec import JobSpec, redact_url
from clipper.jobs.thumbs import check_thumbnail, make_thumbnail
from clipper.jobs.upload import Uploader
from clipper.media.command import JobControl
from clipper.settings import Settings


@dataclass
class JobContext:
    settings: Settings
    uploader: Uploader
    control: JobControl
    scratch: Path
    progress: Callable[[str], None]
    log: Any


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


def check_against_media(spec: JobSpec, info: MediaInfo) -> None:
    """Fail before any work when one of the outputs cannot be made from this media (the same
    checks each stage makes, so a bad last clip does not cost the encodes before it)."""
    for clip in spec.clips:
        resolve_range(clip, info)
        check_streams(clip, info)
    for thumb in spec.thumbnails:
        check_thumbnail(thumb, info)


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
    return record


def run_job(spec: JobSpec, ctx: JobContext, attempts: int) -> dict[str, Any]:
    settings = ctx.settings
    timings: dict[str, float] = {}
    started = time.monotonic()

    @contextmanager
    def stage(name: str, **fields: Any) -> Iterator[None]:
        ctx.control.check()
        ctx.progress(name)
        t0 = time.monotonic()
        yield
        timings[name] = round(timings.get(name, 0.0) + time.monotonic() - t0, 3)
        ctx.log.debug("job.stage", stage=name, seconds=round(time.monotonic() - t0, 3), **fields)

    workdir = ctx.scratch / f"{spec.id}-{uuid.uuid4().hex[:8]}"
    workdir.mkdir(parents=True)
    try:
        with stage("fetch", source=redact_url(spec.source)):
            fetched = fetch_source(spec.source, workdir, settings.fetch, control=ctx.control)
        with stage("probe"):
            info = probe_media(fetched.path, control=ctx.control, what="probe of the source")
            check_against_media(spec, info)
        out_dir = workdir / "out"
        out_dir.mkdir()
        local: list[LocalOutput] = []
        timeout = settings.media.stage_timeout
        threads = settings.workers.ffmpeg_threads
        if spec.clips:
            with stage("clip", clips=len(spec.clips)):
                for clip in spec.clips:
                    r = make_clip(fetched.path, info, clip, out_dir, settings.media, threads=threads,
                                  control=ctx.control, timeout=timeout)
                    v = r.info.video
                    local.append(LocalOutput(clip.name, "clip", r.path, clip.format, r.info.duration,
                                             v.width if v else None, v.height if v else None, r.mode, r.note))
        if spec.thumbnails:
            with stage("thumbnails", thumbnails=len(spec.thumbnails)):
                for thumb in spec.thumbnails:
                    t = make_thumbnail(fetched.path, info, thumb, out_dir, control=ctx.control, timeout=timeout,
                                       threads=threads)
                    local.append(LocalOutput(thumb.name, "thumbnail", t.path, t.format, None, t.width, t.height))
        base = spec.output_dir_key(settings.output.prefix)
        outputs: list[dict[str, Any]] = []
        with stage("upload", outputs=len(local)):
            for out in local:
                key = f"{base}/{out.path.name}"
                ctx.control.check()
                ctx.uploader.upload(out.path, key, {"job-id": spec.id, "name": out.name, "kind": out.kind})
                outputs.append(output_record(out, key))
        # The manifest goes last, so its presence means the set is complete; it carries the same
        # timings as the result (its own small upload is not counted in either).
        timings["total"] = round(time.monotonic() - started, 3)
        manifest = {
            "id": spec.id,
            "source": {"url": redact_url(spec.source), "duration": round(info.duration, 3),
                       "format": info.format_name, "codecs": info.codecs, "bytes": fetched.bytes},
            "outputs": outputs,
            "timings": timings,
            "created_at": round(time.time(), 3),
        }
        manifest_path = workdir / "manifest.json"
        manifest_path.write_text(json.dumps(manifest, indent=2))
        ctx.control.check()
        ctx.uploader.upload(manifest_path, f"{base}/manifest.json", {"job-id": spec.id, "kind": "manifest"})
        return {"id": spec.id, "status": "done", "attempts": attempts, "outputs": outputs,
                "manifest": f"{base}/manifest.json", "timings": timings, "error": None}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

