"""Keys under `Q:` that hold a type clipper never writes there: someone else's squatters.

Producers can write any key; a list planted as `Q:consumer:<id>` or a hash as
`Q:processing:<id>` must not stop the reaper, the heartbeat or `clipper stats` (a WRONGTYPE
error there would stall every item behind it). The queue checks a key's type before it reads
or writes it, leaves a squatter where it is (it is evidence, and deleting someone's key is not
ours to decide) and notes what it found here, once per key and type, for the log.
"""

from __future__ import annotations

import json
from typing import Any

import redis


def key_type(client: redis.Redis, key: str) -> str:
    found = client.type(key)
    return found.decode() if isinstance(found, bytes) else str(found)


def heartbeat_info(beat: bytes) -> dict[str, Any]:
    """What a heartbeat says; a string someone else wrote there says nothing readable."""
    try:
        info = json.loads(beat)
    except ValueError:
        info = None
    return info if isinstance(info, dict) else {"unreadable": True}


class ForeignKeys:
    """What the queue found, and which of it the log has not been told yet."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, str], str] = {}
        self._told: set[tuple[str, str]] = set()

    def check(self, client: redis.Redis, key: str, expected: str, consequence: str) -> bool:
        """True when `key` holds `expected` or nothing; else note the squatter and say False."""
        found = key_type(client, key)
        if found in (expected, "none"):
            return True
        self.note(key, found, expected, consequence)
        return False

    def squatters(self, client: redis.Redis, expected: dict[str, str], consequence: str) -> list[str]:
        """The keys among `expected` (key -> type) that hold another type, each noted."""
        return [key for key, kind in expected.items() if not self.check(client, key, kind, consequence)]

    def note(self, key: str, found: str, expected: str, consequence: str) -> None:
        self._found.setdefault((key, found), f"{key} holds a {found}, not a {expected}: {consequence}")

    def untold(self) -> list[str]:
        """Findings not reported before (each is logged once per daemon, not every cycle)."""
        new = [k for k in self._found if k not in self._told]
        self._told.update(new)
        return [self._found[k] for k in new]

    def all(self) -> list[str]:
        return list(self._found.values())
