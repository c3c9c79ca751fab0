"""Logging for ops: structlog, one JSON object per line in `daemon.log_file`; key=value on a
terminal in the foreground. SIGHUP reopens the file (logrotate's `create` mode).

Secrets never reach a log line: processors redact credentials in URLs and drop known
secret-bearing keys before rendering.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

import structlog

# userinfo runs to the LAST "@" before the path: a password may contain "@" (redis-py splits there)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s]*@")
_URL_QUERY = re.compile(r"(?P<url>[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?\"']+)\?[^\s\"')]*")
_SECRET_KEYS = {"password", "secret", "aws_secret_access_key", "aws_session_token", "token", "authorization"}


def scrub(text: str) -> str:
    """Remove user:password@ and query strings (signed URLs) from URLs inside `text`."""
    text = _URL_CREDENTIALS.sub(lambda m: m["scheme"], text)
    return _URL_QUERY.sub(lambda m: m["url"] + "?…", text)


# an absolute path of two segments or more, not inside a URL (file:///x stays: the producer wrote it)
_ABSOLUTE_PATH = re.compile(r"(?<![\w/.:~-])/(?:[^\s/'\"|,;:()\[\]]+/)+([^\s/'\"|,;:()\[\]]*)")


def public(text: str) -> str:
    """An error text fit for results, dead letters and replies: `scrub`bed, and without the
    daemon's absolute paths (scratch, output root), of which only the file name is kept."""
    return _ABSOLUTE_PATH.sub(lambda m: "…/" + m[1], scrub(text))


def _redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "***"
        elif isinstance(event[key], str):
            event[key] = scrub(event[key])
    return event


class ReopenableFile:
    """A line-buffered append-only log file that SIGHUP can reopen, and that also takes over
    fds 1 and 2 (so stray prints and tracebacks of the daemon land in the same file)."""

    def __init__(self, path: Path, take_std_fds: bool = False):
        self.path = path
        self.take_std_fds = take_std_fds
        self._lock = threading.Lock()
        self._fh: TextIO = self._open()

    def _open(self) -> TextIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a", buffering=1, encoding="utf-8")
        if self.take_std_fds:
            os.dup2(fh.fileno(), 1)
            os.dup2(fh.fileno(), 2)
        return fh

    def write(self, text: str) -> None:
        with self._lock:
            self._fh.write(text)

    def reopen(self) -> bool:
        """False when the new file cannot be opened (e.g. logrotate created it with the wrong
        owner): logging goes on into the old one rather than the daemon dying of it."""
        with self._lock:
            try:
                new = self._open()
            except OSError:
                return False
            old, self._fh = self._fh, new
            old.close()
            return True

    def fileno(self) -> int:
        return self._fh.fileno()


_state: dict[str, Any] = {}


def configure(log_file: Path | None, *, level: str = "debug", foreground: bool = False,
              take_std_fds: bool = False) -> ReopenableFile | None:
    """Configure structlog once per process. Returns the reopenable file (for SIGHUP)."""
    file = ReopenableFile(log_file, take_std_fds=take_std_fds) if log_file else None
    json_renderer = structlog.processors.JSONRenderer(sort_keys=False)
    on_tty = foreground and sys.stderr.isatty()
    console_renderer = structlog.dev.ConsoleRenderer(colors=False) if on_tty else json_renderer
    console = sys.stderr if foreground else None
    levels = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

    def emit(_: Any, __: str, event: dict[str, Any]) -> str:
        if file is not None:
            file.write(json_renderer(None, "", dict(event)) + "\n")
        if console is not None and (file is None or console.fileno() != file.fileno()):
            line = console_renderer(None, "", dict(event))
            try:
                console.write(line + "\n")
                console.flush()
            except (OSError, ValueError):
                pass
        return ""

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            _redact,
            emit,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(levels[level]),
        logger_factory=_NullLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    _state["file"] = file
    return file


class _NullLogger:
    def msg(self, message: str) -> None:  # the emit processor already wrote the line
        pass

    log = debug = info = warning = warn = error = critical = exception = msg


class _NullLoggerFactory:
    def __call__(self, *args: Any) -> _NullLogger:
        return _NullLogger()


def reopen() -> bool:
    """Reopen the log file (SIGHUP); False when that failed and the old file is kept."""
    file = _state.get("file")
    return file.reopen() if file is not None else True


def get_logger(**bind: Any) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger("clipper").bind(**bind)
