"""`clipper.client` end to end against the real daemon: submit, result, status, cancel."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import pytest

from clipper.client import Client, InvalidMessage
from clipper.settings import FetchSettings

if TYPE_CHECKING:
    from conftest import ClipperHarness


@pytest.fixture
def client(clipper: ClipperHarness) -> Client:
    c = Client.from_url(clipper.setting("redis.url"), queue=clipper.queue, fetch=FetchSettings(allow_private=True))
    yield c
    c.close()


def test_submit_then_result_and_status(clipper: ClipperHarness, client: Client, http) -> None:
    with pytest.raises(InvalidMessage, match=r"clips\[0\] \(a\)\.start"):
        client.submit({"source": http.url("/media/short.mp4"), "clips": [{"name": "a", "start": "soon", "end": 1}]})
    assert clipper.pending() == []
    assert client.status("c1") is None
    job_id = client.submit({"id": "c1", "source": http.url("/media/short.mp4"),
                            "clips": [{"name": "a", "start": 0, "end": 2}]})
    assert job_id == "c1"
    waited: dict = {}
    waiter = threading.Thread(target=lambda: waited.update(result=client.result("c1", timeout=60)))
    waiter.start()  # waiting before the daemon even runs: the event wakes it
    clipper.start()
    waiter.join(70)
    result = waited["result"]
    assert result["status"] == "done" and [o["name"] for o in result["outputs"]] == ["a"], result
    status = client.status("c1")
    assert status is not None and status.finished and status.status == "done" and status.attempts == 1
    assert status.result == result
    assert client.result("c1", timeout=0) == result  # already finished: read from the record
    assert client.result("nobody", timeout=0.2) is None
