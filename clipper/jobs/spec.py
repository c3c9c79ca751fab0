"""Messages: parsing, validation, job ids and output keys (pure; no I/O).

A message is JSON text. An object is validated strictly (unknown fields are errors, so a typo
is not silently ignored); a bare JSON string or a plain URL means `{"source": URL}` with the
default clips and thumbnails from settings. Every problem raises `PermanentError` with a
message naming the field, so that the dead letter explains itself.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from clipper.errors import PermanentError
from clipper.logs import scrub
from clipper.settings import MediaSettings

MAX_MESSAGE_BYTES = 256 * 1024
MAX_SECONDS = 7 * 24 * 3600.0  # no real source is longer than a week
ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
PREFIX_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_.=-]{1,128}$")
REPLY_TO_RE = re.compile(r"^[A-Za-z0-9_:.{}\-]{1,200}$")
TIME_RE = re.compile(r"^(\d{1,3}):([0-5]?\d):([0-5]?\d(?:\.\d{1,6})?)$")
SOURCE_SCHEMES = ("http", "https", "s3", "file")

Mode = Literal["copy", "accurate", "smart"]
ClipFormat = Literal["mp4", "webm", "mkv", "gif", "m4a", "mp3"]
ThumbFormat = Literal["jpg", "webp", "png"]
AUDIO_FORMATS = frozenset({"m4a", "mp3"})
# Stream copy can only remux into containers that take the source's codecs as they are.
COPY_FORMATS = frozenset({"mp4", "mkv", "m4a"})


def parse_time(value: Any, field: str) -> float:
    """Seconds (a number) or `HH:MM:SS(.fff)` -> seconds; finite, >= 0, at most a week."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{field}: expected seconds or HH:MM:SS(.fff), got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        m = TIME_RE.match(value.strip())
        if not m:
            raise ValueError(f"{field}: {value!r} is not seconds or HH:MM:SS(.fff)")
        seconds = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    else:
        raise ValueError(f"{field}: expected seconds or HH:MM:SS(.fff), got {type(value).__name__}")
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_SECONDS:
        raise ValueError(f"{field}: {value!r} is out of range (0 to {MAX_SECONDS:.0f} s)")
    return seconds


def _check_name(value: str, what: str) -> str:
    if not NAME_RE.match(value) or value.startswith(".") or ".." in value:
        raise ValueError(f"{what} {value!r} must match [A-Za-z0-9_.-]{{1,64}}, not start with '.' nor contain '..'")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


# Times stay untyped here and are parsed by parse_time, which (unlike pydantic's lax float)
# refuses booleans and numeric strings.
class ClipRequest(_Strict):
    name: str
    start: Any
    end: Any = None
    duration: Any = None
    mode: Mode | None = None
    format: ClipFormat | None = None
    width: int | None = Field(default=None, ge=2, le=16384)
    height: int | None = Field(default=None, ge=2, le=16384)
    max: int | None = Field(default=None, ge=2, le=16384)
    upscale: bool = False

    _n = field_validator("name")(lambda cls, v: _check_name(v, "clip name"))


class ThumbRequest(_Strict):
    name: str
    at: Any
    width: int | None = Field(default=None, ge=2, le=16384)
    height: int | None = Field(default=None, ge=2, le=16384)
    fit: Literal["cover", "contain"] = "cover"
    format: ThumbFormat = "jpg"
    quality: int = Field(default=85, ge=1, le=100)

    _n = field_validator("name")(lambda cls, v: _check_name(v, "thumbnail name"))


class MessageModel(_Strict):
    id: str | None = None
    source: str
    clips: list[ClipRequest] | None = None
    thumbnails: list[ThumbRequest] | None = None
    output_prefix: str | None = None
    reply_to: str | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, v: str | None) -> str | None:
        if v is not None and not valid_id(v):
            raise ValueError(f"id {v!r} must match [A-Za-z0-9_.-]{{1,128}}, not start with '.' nor contain '..'")
        return v

    @field_validator("output_prefix")
    @classmethod
    def _prefix(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = v.split("/")
        if v.startswith("/") or len(v) > 512 or not all(PREFIX_SEGMENT_RE.match(p) and p not in (".", "..") for p in parts):
            raise ValueError(f"output_prefix {v!r} must be a relative path of [A-Za-z0-9_.=-] segments without '..'")
        return v

    @field_validator("reply_to")
    @classmethod
    def _reply(cls, v: str | None) -> str | None:
        if v is not None and not REPLY_TO_RE.match(v):
            raise ValueError(f"reply_to {v!r} must match [A-Za-z0-9_:.{{}}-]{{1,200}}")
        return v

    @model_validator(mode="after")
    def _unique_names(self) -> MessageModel:
        names = [c.name for c in self.clips or []] + [t.name for t in self.thumbnails or []]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate output names: {', '.join(dupes)}")
        if names and "manifest" in names:
            raise ValueError("'manifest' is reserved for manifest.json")
        return self


@dataclass(frozen=True)
class ClipSpec:
    name: str
    start: float
    end: float
    mode: Mode
    format: ClipFormat
    width: int | None = None
    height: int | None = None
    max: int | None = None
    upscale: bool = False
    mode_was_explicit: bool = False

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def resized(self) -> bool:
        return any(v is not None for v in (self.width, self.height, self.max))

    @property
    def audio_only(self) -> bool:
        return self.format in AUDIO_FORMATS


@dataclass(frozen=True)
class ThumbSpec:
    name: str
    at: float
    width: int | None
    height: int | None
    fit: Literal["cover", "contain"]
    format: ThumbFormat
    quality: int


@dataclass(frozen=True)
class JobSpec:
    id: str
    source: str
    clips: tuple[ClipSpec, ...]
    thumbnails: tuple[ThumbSpec, ...]
    output_prefix: str | None
    reply_to: str | None

    def output_dir_key(self, root_prefix: str) -> str:
        """`<output.prefix>/<output_prefix or id>`: a pure function of the message, so a
        redelivered job overwrites the same objects."""
        parts = [p for p in root_prefix.strip("/").split("/") if p] + (self.output_prefix or self.id).split("/")
        return "/".join(parts)


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _decode(raw: bytes | str) -> Any:
    if isinstance(raw, bytes):
        if len(raw) > MAX_MESSAGE_BYTES:
            raise PermanentError(f"message is {len(raw)} bytes, more than the limit of {MAX_MESSAGE_BYTES}")
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PermanentError(f"message is not UTF-8 text: {exc}") from None
    if len(raw) > MAX_MESSAGE_BYTES:
        raise PermanentError(f"message is {len(raw)} characters, more than the limit of {MAX_MESSAGE_BYTES}")
    text = raw.strip()
    if not text:
        raise PermanentError("message is empty")
    if text[0] not in '{["' and not text[0].isdigit() and text not in ("true", "false", "null"):
        # a plain URL (not JSON) is a shorthand for {"source": URL}
        return text
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise PermanentError("message is not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise PermanentError(f"message is not valid JSON: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def job_id_for_raw(raw: bytes | str) -> str:
    """The job id of a raw item, even an invalid one, so attempts and dead letters have a key.

    An explicit valid `id` wins; otherwise a digest of the message content (canonical JSON),
    so the same message gets the same id; undecodable text gets a digest of its bytes.
    """
    try:
        obj = _decode(raw)
    except PermanentError:
        data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
        return "x-" + hashlib.sha256(data).hexdigest()[:24]
    return _job_id(obj)


def valid_id(value: str) -> bool:
    return bool(ID_RE.match(value)) and not value.startswith(".") and ".." not in value


def _job_id(obj: Any) -> str:
    """The id of a decoded message: its valid explicit `id`, else a digest of its content."""
    explicit = obj.get("id") if isinstance(obj, dict) else None
    if isinstance(explicit, str) and valid_id(explicit):
        return explicit
    return "j-" + hashlib.sha256(_canonical(obj).encode()).hexdigest()[:24]


def reply_to_for_raw(raw: bytes | str) -> str | None:
    """The `reply_to` of a raw item when it has a valid one, even if the rest is invalid (a
    poison message buried without being parsed still tells its producer)."""
    try:
        obj = _decode(raw)
    except PermanentError:
        return None
    reply_to = obj.get("reply_to") if isinstance(obj, dict) else None
    return reply_to if isinstance(reply_to, str) and REPLY_TO_RE.match(reply_to) else None


def _validate_source(url: str) -> str:
    if len(url) > 4096:
        raise PermanentError("source: URL longer than 4096 characters")
    parts = urlsplit(url)
    if parts.scheme.lower() not in SOURCE_SCHEMES:
        raise PermanentError(
            f"source: scheme {parts.scheme or '(none)'!r} is not allowed (use {', '.join(SOURCE_SCHEMES)}): {url[:80]!r}"
        )
    if parts.scheme.lower() in ("http", "https", "s3") and not parts.hostname:
        raise PermanentError(f"source: URL has no host: {redact_url(url)}")
    if any(ord(ch) < 0x21 for ch in url):
        raise PermanentError("source: URL contains whitespace or control characters")
    return url


def redact_url(url: str) -> str:
    """The URL without user:password and without query string (signed URLs carry secrets):
    the one scrubber, `logs.scrub`, applied to a URL that an error message names."""
    return scrub(url)


def _clip_spec(c: ClipRequest, media: MediaSettings, index: int) -> ClipSpec:
    where = f"clips[{index}] ({c.name})"
    try:
        start = parse_time(c.start, f"{where}.start")
        if (c.end is None) == (c.duration is None):
            raise ValueError(f"{where}: give exactly one of end and duration")
        if c.end is not None:
            end = parse_time(c.end, f"{where}.end")
        else:
            end = start + parse_time(c.duration, f"{where}.duration")
    except ValueError as exc:
        raise PermanentError(str(exc)) from None
    if end <= start:
        raise PermanentError(f"{where}: end ({end:g}) must be after start ({start:g})")
    if end - start > media.max_clip_duration:
        raise PermanentError(f"{where}: duration {end - start:g} s exceeds media.max_clip_duration {media.max_clip_duration:g} s")
    fmt = c.format or media.default_format
    for dim in ("width", "height", "max"):
        v = getattr(c, dim)
        if v is not None and v > media.max_dimension:
            raise PermanentError(f"{where}.{dim}: {v} exceeds media.max_dimension {media.max_dimension}")
    needs_encode = fmt not in COPY_FORMATS or any(v is not None for v in (c.width, c.height, c.max))
    if c.mode == "copy" and needs_encode:
        why = f"format {fmt!r}" if fmt not in COPY_FORMATS else "a resize (width/height/max)"
        raise PermanentError(f"{where}: mode 'copy' cannot produce {why}; use mode 'accurate' or 'smart'")
    mode = c.mode or ("accurate" if needs_encode and media.default_mode == "copy" else media.default_mode)
    if fmt == "gif" and end - start > media.gif_max_duration:
        raise PermanentError(f"{where}: a gif may last at most media.gif_max_duration = {media.gif_max_duration:g} s")
    return ClipSpec(c.name, start, end, mode, fmt, c.width, c.height, c.max, c.upscale, c.mode is not None)


def _thumb_spec(t: ThumbRequest, media: MediaSettings, index: int) -> ThumbSpec:
    where = f"thumbnails[{index}] ({t.name})"
    try:
        at = parse_time(t.at, f"{where}.at")
    except ValueError as exc:
        raise PermanentError(str(exc)) from None
    for dim in ("width", "height"):
        v = getattr(t, dim)
        if v is not None and v > media.max_dimension:
            raise PermanentError(f"{where}.{dim}: {v} exceeds media.max_dimension {media.max_dimension}")
    return ThumbSpec(t.name, at, t.width, t.height, t.fit, t.format, t.quality)


def _pydantic_reason(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        loc = ".".join(str(x) for x in e["loc"]) or "message"
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "invalid message: " + "; ".join(parts)


def parse_message(raw: bytes | str, media: MediaSettings) -> JobSpec:
    """Raw queue item -> JobSpec, or PermanentError naming what is wrong."""
    obj = _decode(raw)
    job_id = _job_id(obj)
    if isinstance(obj, str):
        obj = {"source": obj.strip()}
    if not isinstance(obj, dict):
        raise PermanentError(f"message must be a JSON object or a URL string, not {type(obj).__name__}")
    if obj.get("clips") is None and obj.get("thumbnails") is None:
        obj = dict(obj)
        obj["clips"] = [c.model_dump() for c in media.default_clips]
        obj["thumbnails"] = [t.model_dump() for t in media.default_thumbnails]
    try:
        model = MessageModel.model_validate(obj)
    except ValidationError as exc:
        raise PermanentError(_pydantic_reason(exc)) from None
    source = _validate_source(model.source)
    clips = tuple(_clip_spec(c, media, i) for i, c in enumerate(model.clips or []))
    thumbs = tuple(_thumb_spec(t, media, i) for i, t in enumerate(model.thumbnails or []))
    if not clips and not thumbs:
        raise PermanentError("message asks for nothing: give at least one clip or thumbnail")
    if len(clips) + len(thumbs) > media.max_clips:
        raise PermanentError(f"message asks for {len(clips) + len(thumbs)} outputs, more than media.max_clips = {media.max_clips}")
    return JobSpec(job_id, source, clips, thumbs, model.output_prefix, model.reply_to)
