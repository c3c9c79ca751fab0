"""The names of everything clipper keeps in Redis, all derived from the queue's name `Q` (so a
hash tag in it keeps them in one cluster slot), and the text of the Lua scripts that move items
between them. Pure: no client here; `queue.py` runs the scripts.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import socket
from dataclasses import dataclass

# Retry members carry a random 8-hex prefix: a sorted set keeps one copy of equal members,
# and two identical messages waiting at once must stay two items.
RETRY_NONCE_LEN = 9  # "xxxxxxxx|"

# The atomic moves live in clipper/lua/<name>.lua, each with a header naming its KEYS and ARGV.
# Every script that writes a job record starts with the one type check in job_record.lua.
_LUA = importlib.resources.files("clipper") / "lua"
_WRITES_JOB_RECORD = ("mark_claimed", "ack", "retry_later", "bury", "requeue", "promote", "reap", "dead_retry",
                      "bury_as_is", "cancel_waiting", "request_cancel")  # and the type checks of the keys items
# move into (`holds`)
# How many of the newest items of Q a claim looks at for high-priority messages pushed there.
HIGH_SCAN = 1000


def lua_source(name: str) -> str:
    """The text of one script as Redis runs it: job_record.lua first when it writes a job record."""
    body = (_LUA / f"{name}.lua").read_text(encoding="utf-8")
    if name in _WRITES_JOB_RECORD:
        return (_LUA / "job_record.lua").read_text(encoding="utf-8") + body
    return body


def default_consumer_id(pid_file: str) -> str:
    """Stable for one host and pid file: a daemon restarted after a crash holds the pid lock,
    so nobody else uses this id, and it can take its own leftovers back at once."""
    digest = hashlib.sha1(os.path.realpath(pid_file).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}-{digest}"


@dataclass(frozen=True)
class Keys:
    queue: str

    @property
    def high(self) -> str:
        """The high-priority lane: claimed before `queue` (see claim)."""
        return f"{self.queue}:high"

    @property
    def retry(self) -> str:
        return f"{self.queue}:retry"

    @property
    def dead(self) -> str:
        return f"{self.queue}:dead"

    @property
    def dead_dropped(self) -> str:
        """How many dead letters retention dropped (a counter)."""
        return f"{self.queue}:dead:dropped"

    @property
    def consumers(self) -> str:
        return f"{self.queue}:consumers"

    @property
    def events(self) -> str:
        return f"{self.queue}:events"

    @property
    def outbox(self) -> str:
        return f"{self.queue}:outbox"

    def processing(self, consumer: str) -> str:
        return f"{self.queue}:processing:{consumer}"

    def heartbeat(self, consumer: str) -> str:
        return f"{self.queue}:consumer:{consumer}"

    def job(self, job_id: str) -> str:
        return f"{self.queue}:job:{job_id}"
