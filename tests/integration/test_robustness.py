"""Things that must not take the daemon down or strand an item: a reply_to key of the wrong
type, an item in our processing list that no worker holds, an item claimed while stopping,
and a poison message's producer still hearing of it."""

from __future__ import annotations

import json
import os
import signal
from typing import TYPE_CHECKING

from services import pid_gone

if TYPE_CHECKING:
    from conftest import ClipperHarness


def short_job(http, job_id: str, **extra) -> dict:
    return {"id": job_id, "source": http.url("/media/short.mp4"), "clips": [{"name": "a", "start": 0, "end": 1}], **extra}


def test_reply_to_of_another_type_does_not_stop_the_daemon(clipper: ClipperHarness, http) -> None:
    clipper.r.set("app:taken", "a string, not a list")
    clipper.start()
    clipper.push(short_job(http, "wrongtype", reply_to="app:taken"))
    clipper.push(short_job(http, "after"))
    assert clipper.wait_job("wrongtype")["status"] == "done"
    assert clipper.wait_job("after")["status"] == "done"
    assert clipper.r.get("app:taken") == b"a string, not a list"
    assert clipper.running_pid() == clipper.pid
    skipped = [e for e in clipper.log_events() if e.get("event") == "job.reply_skipped"]
    assert skipped and skipped[0]["job_id"] == "wrongtype", skipped
    assert clipper.processing() == []


def test_an_item_held_by_no_worker_goes_back_to_the_queue_and_is_done(clipper: ClipperHarness, http) -> None:
    # as if a BLMOVE had moved it and its reply was lost: in our processing list, in no worker
    clipper.configure(**{"redis.heartbeat_ttl": 2})
    clipper.start()
    [consumer] = [c["consumer"] for c in json.loads(clipper.cli("stats", clipper.env_name, "--json").stdout)["consumers"]]
    clipper.r.lpush(clipper.key(f"processing:{consumer}"), json.dumps(short_job(http, "orphan")))
    assert clipper.wait_job("orphan", timeout=30)["status"] == "done"
    requeued = [e for e in clipper.log_events() if e.get("event") == "job.requeued" and e.get("job_id") == "orphan"]
    assert requeued and "no worker" in requeued[0]["reason"], requeued


def test_an_item_claimed_while_stopping_is_put_back_not_started(clipper: ClipperHarness, http) -> None:
    clipper.configure(**{"workers.count": 1})
    pid = clipper.start()
    os.kill(pid, signal.SIGTERM)
    raw = clipper.push(short_job(http, "late"))  # lands while the daemon's BLMOVE still waits
    clipper.wait_until(lambda: pid_gone(pid), 20, "the daemon to exit")
    assert clipper.places(raw) == ["Q"]
    assert clipper.job("late").get("status") in (None, "queued")
    assert not any(e.get("event") == "job.claimed" for e in clipper.log_events())
    assert http.count("/media/short.mp4") == 0


def test_a_buried_poison_message_still_reaches_its_reply_to(clipper: ClipperHarness, http) -> None:
    # attempts already used up, as after repeated crashes: the next claim buries it unparsed
    clipper.configure(**{"retry.max_attempts": 2})
    msg = short_job(http, "poison2", reply_to="app:poison-results")
    clipper.r.hset(clipper.key("job:poison2"), mapping={"status": "running", "attempts": 2})
    clipper.push(msg)
    clipper.start()
    assert clipper.wait_job("poison2")["status"] == "failed"
    reply = clipper.reply("app:poison-results")
    assert reply["id"] == "poison2" and reply["status"] == "failed" and "retry.max_attempts" in reply["error"]["message"]


def test_a_job_record_of_another_type_ends_dead_with_the_reason(clipper: ClipperHarness, http) -> None:
    clipper.r.set(clipper.key("job:squatted"), "someone else's string")
    clipper.start()
    raw = clipper.push(short_job(http, "squatted"))
    clipper.push(short_job(http, "neighbour"))
    assert clipper.wait_job("neighbour")["status"] == "done"
    clipper.wait_until(lambda: clipper.places(raw) == ["dead"], 30, "the item to be dead-lettered")
    [entry] = clipper.dead()
    assert "not a job record" in entry["error"]["message"], entry
    assert clipper.running_pid() == clipper.pid
