"""Output reuse: an output made once from a source version is kept and handed to the next job
that asks for the same thing, byte-identical, instead of being encoded again.

The key is a digest of the source version's cache key (session.py: URL identity + validator),
the output's normalized parameters (the clip or thumbnail spec without its name) with every
media setting, and OUTPUT_VERSION with clipper's version: a new release or another setting
never reuses an older output. Outputs live in the cache's `outputs/` area under their own
budget (`cache.output_max_bytes`), evicted least recently used first (store.py).

Jobs that want the same output at the same time make it once: the maker holds the entry's
`make.lock` while it encodes; the others wait on it, then copy what it kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clipper import __version__
from clipper.jobs.spec import ClipSpec, ThumbSpec
from clipper.media.command import JobControl
from clipper.settings import MediaSettings
from clipper.sources.store import Area, file_lock, read_json, wait_check, write_atomic

OUTPUT_VERSION = 1  # bump when the media pipeline's output for the same parameters changes


def output_key(version_key: str, spec: ClipSpec | ThumbSpec, media: MediaSettings) -> str:
    """Digest of what decides an output's bytes (module doc) (pure)."""
    params = {k: v for k, v in dataclasses.asdict(spec).items() if k != "name"}
    what = {"kind": type(spec).__name__, "params": params, "media": media.model_dump(mode="json"),
            "version": f"{__version__}/{OUTPUT_VERSION}", "source": version_key}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _copy_atomic(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


Made = tuple[Path, dict[str, Any]]  # the output file and what the pipeline records of it


def reuse_or_make(area: Area, key: str, dest: Path, make: Callable[[], Made],
                  control: JobControl) -> tuple[Path, dict[str, Any], bool]:
    """(file, record, reused): the kept output copied to `dest` when there is one, else
    `make()`'s output, kept for the next job (module doc)."""
    check = wait_check(control, "output reuse")
    lease = area.lease(key, check)
    try:
        with file_lock(lease.dir / "make.lock", check=check):
            meta = read_json(lease.dir / "meta.json")
            kept = lease.dir / "output"
            if meta is not None and kept.is_file():
                _copy_atomic(kept, dest)
                area.counters.add(output_reuses=1)
                return dest, meta, True
            path, record = make()
            _copy_atomic(path, kept)
            write_atomic(lease.dir / "meta.json", json.dumps(record).encode())
            area.wrote(path.stat().st_size)
            return path, record, False
    finally:
        lease.release()
