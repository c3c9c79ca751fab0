"""Claim only when free: a daemon never holds more items than it has workers, so the rest stay
in Q for other daemons; two daemons on one queue share the work and do each job once."""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import ClipperHarness


def slow_job(http, job_id: str) -> dict:
    return {"id": job_id, "source": http.url("/slow/short.mp4"), "clips": [{"name": "a", "start": 0, "end": 2}]}


class HeldSampler:
    """Samples, in the background, the largest number of items each processing list held."""

    def __init__(self, clipper: ClipperHarness):
        self.clipper = clipper
        self.max_held: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for key in self.clipper.processing_keys():
                held = self.clipper.r.llen(key)
                self.max_held[key] = max(self.max_held.get(key, 0), held)

    def __enter__(self) -> HeldSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_a_daemon_holds_no_more_than_its_workers(clipper: ClipperHarness, http) -> None:
    http.slow_rate = 400_000  # ~1 s per download
    clipper.configure(**{"workers.count": 2})
    clipper.start()
    ids = [f"w{i}" for i in range(6)]
    with HeldSampler(clipper) as sampler:
        for job_id in ids:
            clipper.push(slow_job(http, job_id))
        jobs = clipper.wait_jobs(ids, timeout=60)
    assert {j["status"] for j in jobs.values()} == {"done"}
    assert sampler.max_held, "never saw an item held"
    assert max(sampler.max_held.values()) <= 2, sampler.max_held


def test_two_daemons_share_one_queue(clipper_factory, http) -> None:
    http.slow_rate = 300_000
    a = clipper_factory(**{"workers.count": 1})
    b = clipper_factory(**{"workers.count": 1})
    a.start()
    b.start()
    ids = [f"s{i}" for i in range(4)]
    with HeldSampler(a) as sampler:
        for job_id in ids:
            a.push(slow_job(http, job_id))
        jobs = a.wait_jobs(ids, timeout=60)
    assert {j["status"] for j in jobs.values()} == {"done"}
    assert len(sampler.max_held) == 2 and max(sampler.max_held.values()) <= 1, sampler.max_held

    def claimed(h: ClipperHarness) -> set[str]:
        return {e["job_id"] for e in h.log_events() if e.get("job_id") in ids}

    assert claimed(a) and claimed(b), (claimed(a), claimed(b))
    assert claimed(a) | claimed(b) == set(ids)
    # each job ran once: one opening request for its source each (its first block), one result each
    opening = [r for r in http.records if r.path == "/slow/short.mp4" and (r.range or "").startswith("bytes=0-")]
    assert len(opening) == len(ids), http.requests
    assert all(json.loads(j["result"])["attempts"] == 1 for j in jobs.values())
    stats = json.loads(a.cli("stats", "test", "--json").stdout)
    assert len(stats["consumers"]) == 2
