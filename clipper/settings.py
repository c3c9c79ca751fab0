"""Typed settings: `settings/<ENV>.toml`, then `CLIPPER_<SECTION>__<KEY>` environment
variables, then command-line options; validated once, at start.

Unknown keys are errors (a typo in prod must not silently fall back to a default), and
relative paths are made absolute against the directory clipper was started from, before
the daemon detaches and changes directory.
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from clipper.errors import SettingsError

ENV_PREFIX = "CLIPPER_"
SETTINGS_DIR_ENV = "CLIPPER_SETTINGS_DIR"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RedisSettings(_Section):
    url: str = "redis://127.0.0.1:6379/0"
    queue: str = Field(default="clipper:jobs", min_length=1, max_length=200)
    heartbeat_ttl: float = Field(default=15.0, gt=1)
    socket_timeout: float = Field(default=5.0, gt=0)
    # WAIT for this many replicas after each transition (0: off); see README "Sentinel and Cluster"
    wait_replicas: int = Field(default=0, ge=0, le=16)
    wait_timeout: float = Field(default=1.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        from clipper.connections import CLUSTER_SCHEMES, SENTINEL_SCHEMES, parse_topology

        schemes = ("redis", "rediss", "unix", *SENTINEL_SCHEMES, *CLUSTER_SCHEMES)
        if v.partition("://")[0] not in schemes or "://" not in v:
            raise ValueError("must start with " + ", ".join(f"{s}://" for s in schemes))
        parse_topology(v)  # a ValueError names what is wrong
        return v

    @model_validator(mode="after")
    def _one_slot_on_cluster(self) -> RedisSettings:
        from clipper.connections import cluster_queue_problem, is_cluster_url

        problem = cluster_queue_problem(self.queue) if is_cluster_url(self.url) else None
        if problem:
            raise ValueError(f"redis.queue {problem}")
        return self


class DaemonSettings(_Section):
    pid_file: Path = Path("var/run/clipper.pid")
    log_file: Path = Path("var/log/clipper.log")
    work_dir: Path = Path("var/work")
    stop_timeout: float = Field(default=30.0, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "debug"


class WorkersSettings(_Section):
    count: int = Field(default=0, ge=0, le=256)
    ffmpeg_threads: int = Field(default=0, ge=0, le=64)

    def resolved_count(self) -> int:
        return self.count or os.cpu_count() or 1


class FetchSettings(_Section):
    allow_private: bool = False
    allow_file_roots: tuple[Path, ...] = ()
    timeout: float = Field(default=300.0, gt=0)
    connect_timeout: float = Field(default=10.0, gt=0)
    max_bytes: int = Field(default=10 * 1024**3, gt=0)
    max_redirects: int = Field(default=5, ge=0, le=20)
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    # None: any bucket the daemon's credentials can read; a list: only these
    s3_allow_buckets: tuple[str, ...] | None = None


class OutputSettings(_Section):
    kind: Literal["s3", "dir"] = "dir"
    dir: Path = Path("var/clips")
    bucket: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    prefix: str = "clips"

    @model_validator(mode="after")
    def _bucket_for_s3(self) -> OutputSettings:
        if self.kind == "s3" and not self.bucket:
            raise ValueError("output.bucket is required when output.kind = 's3'")
        if ".." in Path(self.prefix).parts or self.prefix.startswith("/"):
            raise ValueError("output.prefix must be relative and must not contain '..'")
        return self


class CacheSettings(_Section):
    """The shared cache on disk (clipper.sources): source blocks and probes, reusable outputs,
    and remembered permanent failures; several daemons on one host may share `dir`."""

    dir: Path = Path("var/cache")
    max_bytes: int = Field(default=10 * 1024**3, ge=1024**2)  # source blocks
    output_max_bytes: int = Field(default=2 * 1024**3, ge=0)  # reusable outputs; 0: no output reuse
    block_size: int = Field(default=64 * 1024, ge=4096, le=16 * 1024**2)
    ttl: float = Field(default=7 * 86400.0, gt=0)  # an entry unused this long is removed
    failure_ttl: float = Field(default=300.0, ge=0)  # 0: no failure cache


class RetrySettings(_Section):
    max_attempts: int = Field(default=5, ge=1, le=100)
    backoff_base: float = Field(default=2.0, gt=0)
    backoff_max: float = Field(default=300.0, gt=0)


class DeadSettings(_Section):
    """Dead-letter retention: the oldest letters beyond either limit are dropped (and counted in
    Q:dead:dropped); 0 means no limit."""

    max_entries: int = Field(default=100_000, ge=0)
    max_age: float = Field(default=30 * 24 * 3600.0, ge=0)


class ResultsSettings(_Section):
    ttl: int = Field(default=7 * 24 * 3600, gt=0)


class MetricsSettings(_Section):
    """The Prometheus endpoint. Loopback by default: the numbers name no job, but they are
    nobody else's business until ops decide (a reverse proxy, or address = "0.0.0.0")."""

    enabled: bool = False
    address: str = "127.0.0.1"
    port: int = Field(default=9787, ge=1, le=65535)


class ClipDefault(_Section):
    name: str = "clip"
    start: float | str = 0.0
    duration: float | str = 10.0


class ThumbDefault(_Section):
    name: str = "poster"
    at: float | str = 1.0
    width: int = 256
    height: int = 256
    fit: Literal["cover", "contain"] = "cover"
    format: Literal["jpg", "webp", "png"] = "jpg"


class MediaSettings(_Section):
    default_mode: Literal["copy", "accurate", "smart"] = "copy"
    default_format: Literal["mp4", "webm", "mkv", "gif", "m4a", "mp3"] = "mp4"
    x264_preset: str = "veryfast"
    x264_crf: int = Field(default=20, ge=0, le=51)
    vp9_crf: int = Field(default=32, ge=0, le=63)
    audio_bitrate: str = "128k"
    gif_fps: int = Field(default=10, ge=1, le=30)
    gif_max_width: int = Field(default=480, ge=16, le=1920)
    gif_max_duration: float = Field(default=30.0, gt=0)
    max_clips: int = Field(default=50, ge=1)
    max_clip_duration: float = Field(default=3 * 3600.0, gt=0)
    max_dimension: int = Field(default=4096, ge=16)
    stage_timeout: float = Field(default=1800.0, gt=0)
    # the whole job's media work (probe, clips, thumbnails); see docs/DECISIONS.md "Limits"
    job_timeout: float = Field(default=3600.0, gt=0)
    # sources are refused right after the probe, before any decode, when they exceed these
    max_source_pixels: int = Field(default=4096 * 4096, ge=16 * 16)
    max_source_fps: float = Field(default=240.0, gt=0)
    max_source_duration: float = Field(default=24 * 3600.0, gt=0)
    max_source_streams: int = Field(default=16, ge=1)
    # kernel limits of every ffmpeg/ffprobe child: address space (bytes) and CPU time (s); 0: none
    max_child_memory: int = Field(default=4 * 1024**3, ge=0)
    max_child_cpu: int = Field(default=7200, ge=0)
    default_clips: tuple[ClipDefault, ...] = (ClipDefault(),)
    default_thumbnails: tuple[ThumbDefault, ...] = (ThumbDefault(),)


class TestingSettings(_Section):
    """Hooks for the crash tests; never set in production."""

    # seconds between recording an outcome and delivering its reply (the loop keeps running)
    pause_before_reply: float = Field(default=0.0, ge=0, le=3600)


class Settings(_Section):
    env: str = "dev"
    redis: RedisSettings = RedisSettings()
    daemon: DaemonSettings = DaemonSettings()
    workers: WorkersSettings = WorkersSettings()
    fetch: FetchSettings = FetchSettings()
    output: OutputSettings = OutputSettings()
    retry: RetrySettings = RetrySettings()
    cache: CacheSettings = CacheSettings()
    results: ResultsSettings = ResultsSettings()
    dead: DeadSettings = DeadSettings()
    media: MediaSettings = MediaSettings()
    metrics: MetricsSettings = MetricsSettings()
    testing: TestingSettings = TestingSettings()


def settings_dirs(cwd: Path | None = None, environ: Mapping[str, str] | None = None) -> list[Path]:
    """Where `ENV.toml` files are looked for, first match wins."""
    environ = os.environ if environ is None else environ
    cwd = cwd or Path.cwd()
    dirs: list[Path] = []
    if environ.get(SETTINGS_DIR_ENV):
        dirs.append(Path(environ[SETTINGS_DIR_ENV]))
    # last: the files `pip install .` put under <prefix>/share/clipper/settings, and the
    # repository's own settings/ (a source checkout or an editable install)
    dirs += [cwd / "settings", Path("/etc/clipper"), Path(sys.prefix) / "share" / "clipper" / "settings",
             Path(__file__).resolve().parent.parent / "settings"]
    unique: list[Path] = []
    for d in dirs:
        if d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


def known_envs(dirs: list[Path]) -> list[str]:
    names: set[str] = set()
    for d in dirs:
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.toml"))
    return sorted(names)


def find_settings_file(env: str, dirs: list[Path]) -> Path:
    if not env or "/" in env or env.startswith("."):
        raise SettingsError(f"invalid ENV name {env!r}")
    for d in dirs:
        candidate = d / f"{env}.toml"
        if candidate.is_file():
            return candidate
    known = ", ".join(known_envs(dirs)) or "none"
    raise SettingsError(f"unknown ENV {env!r}: no {env}.toml in {', '.join(map(str, dirs))} (known: {known})")


def env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """`CLIPPER_WORKERS__COUNT=4` -> {"workers": {"count": 4}}; values are JSON when they parse."""
    out: dict[str, dict[str, Any]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("__")
        if not section or not key:
            continue
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key in _STRINGY_KEYS:
            value = raw  # e.g. a numeric-looking bucket name or prefix stays a string
        out.setdefault(section, {})[key] = value
    return out


_STRINGY_KEYS = {"address", "url", "queue", "bucket", "prefix", "region", "endpoint_url", "x264_preset", "audio_bitrate"}


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _resolve_paths(data: dict[str, Any], cwd: Path) -> dict[str, Any]:
    def absolute(p: Any) -> Any:
        return str(p) if Path(str(p)).is_absolute() else str(cwd / str(p))

    daemon = data.get("daemon", {})
    for key in ("pid_file", "log_file", "work_dir"):
        if key in daemon:
            daemon[key] = absolute(daemon[key])
    output = data.get("output", {})
    if "dir" in output:
        output["dir"] = absolute(output["dir"])
    cache = data.get("cache", {})
    if "dir" in cache:
        cache["dir"] = absolute(cache["dir"])
    fetch = data.get("fetch", {})
    if isinstance(fetch.get("allow_file_roots"), list):
        fetch["allow_file_roots"] = [absolute(p) for p in fetch["allow_file_roots"]]
    return data


def _describe(err: ValidationError, source: str, env_names: Mapping[tuple[str, ...], str]) -> str:
    """Name the key, and the environment variable when the value came from one."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        origin = env_names.get(tuple(str(x) for x in e["loc"][:2])) or env_names.get((str(e["loc"][0]),))
        parts.append(f"{loc}: {msg}" + (f" (from {origin})" if origin else ""))
    return f"invalid settings ({source}): " + "; ".join(parts)


def load_settings(
    env: str,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """File < environment < command-line `overrides`; raises SettingsError naming the key."""
    environ = os.environ if environ is None else environ
    cwd = (cwd or Path.cwd()).resolve()
    path = find_settings_file(env, settings_dirs(cwd, environ))
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"cannot read {path}: {exc}") from exc
    from_env = env_overrides(environ)
    data = _merge(data, from_env)
    data = _merge(data, {k: dict(v) for k, v in (overrides or {}).items() if v})
    data["env"] = env
    if "daemon" not in data:
        data["daemon"] = {}
    # defaults for paths are relative too; make them explicit so they resolve against cwd
    for key, default in (("pid_file", f"var/run/clipper-{env}.pid"), ("log_file", f"var/log/clipper-{env}.log"),
                         ("work_dir", "var/work")):
        data["daemon"].setdefault(key, default)
    data.setdefault("output", {}).setdefault("dir", "var/clips")
    data.setdefault("cache", {}).setdefault("dir", "var/cache")
    data = _resolve_paths(data, cwd)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        env_names: dict[tuple[str, ...], str] = {}
        for section, keys in from_env.items():
            for key in keys:
                env_names[(section, key)] = f"{ENV_PREFIX}{section.upper()}__{key.upper()}"
            if section not in Settings.model_fields:
                env_names[(section,)] = f"{ENV_PREFIX}{section.upper()}__{next(iter(keys)).upper()}"
        raise SettingsError(_describe(exc, str(path), env_names)) from None
