"""The failure cache: sources that failed permanently, remembered for `cache.failure_ttl`.

A source the origin called gone or forbidden (404, 410, 401, 403), or that is not a media file
we accept, fails the same way for the next job: that job is dead-lettered at once with the
original reason and "(cached)", without a request to the origin. Transient failures are never
remembered. The key is a digest of the whole URL, credentials included, so a job with other
credentials for the same URL asks the origin itself; nothing secret is stored in clear.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from clipper.errors import PermanentError
from clipper.sources.store import Counters, read_json, write_atomic


class FailureCache:
    def __init__(self, root: Path, ttl: float, counters: Counters):
        self.root = root
        self.ttl = ttl
        self.counters = counters

    def _path(self, url: str) -> Path:
        return self.root / f"{hashlib.sha256(url.encode('utf-8', 'surrogatepass')).hexdigest()}.json"

    def check(self, url: str) -> None:
        """Raise the remembered failure of `url`, if one is still fresh."""
        if self.ttl <= 0:
            return
        path = self._path(url)
        data = read_json(path)
        if data is None:
            return
        if float(data.get("expires", 0)) <= time.time():
            path.unlink(missing_ok=True)
            return
        self.counters.add(failure_hits=1)
        raise PermanentError(f"{data.get('reason', 'source failed')} (cached)")

    def remember(self, url: str, reason: str) -> None:
        if self.ttl <= 0:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self._path(url), json.dumps({"reason": reason, "expires": time.time() + self.ttl}).encode())
