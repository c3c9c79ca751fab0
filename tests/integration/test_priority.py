"""A high-priority job waits for a free worker, not for the normal jobs queued before it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import ClipperHarness


def test_high_job_starts_as_soon_as_the_first_worker_is_free(clipper: ClipperHarness, http) -> None:
    clipper.configure(**{"workers.count": 1})
    clip = [{"name": "a", "start": 0, "end": 1}]
    # the first job trickles its source in for a few seconds: the high one arrives while it runs
    clipper.push({"id": "n0", "source": http.url("/slow/short.mp4?bps=100000"), "clips": clip})
    for i in range(1, 40):
        clipper.push({"id": f"n{i}", "source": http.url("/media/short.mp4"), "clips": clip})
    clipper.start()
    clipper.wait_job("n0", ["running"], timeout=20)
    # a plain LPUSH to Q, as any producer may do: the claim finds it (Client.submit uses Q:high)
    clipper.push({"id": "high", "source": http.url("/media/short.mp4"), "clips": clip, "priority": "high"})
    assert clipper.wait_job("high", timeout=60)["status"] == "done"
    claimed = [e["job_id"] for e in clipper.log_events() if e.get("event") == "job.claimed"]
    assert claimed[:2] == ["n0", "high"], claimed
