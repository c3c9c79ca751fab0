"""A long re-encode reports its progress: the job's percent in Q:job:<id> and on Q:events rises
from 0 to 100 without going back, and `clipper stats --watch`, run in a pseudo-terminal, draws
the job's bar (the test reads the screen)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

from clipper.views import HOME_AND_CLEAR

if TYPE_CHECKING:
    from conftest import ClipperHarness

BAR = re.compile(r"\[[#.]+\]\s+(\d+\.\d)%")


class EventLog:
    """Every Q:events message about one job, collected by a subscriber thread."""

    def __init__(self, clipper: ClipperHarness, job_id: str):
        self.job_id = job_id
        self.pubsub = clipper.r.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(clipper.key("events"))
        self.events: list[dict] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            message = self.pubsub.get_message(timeout=0.2)
            if message and message["type"] == "message":
                event = json.loads(message["data"])
                if event.get("id") == self.job_id:
                    self.events.append(event)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.pubsub.close()


class Screen:
    """`clipper stats --watch` in a pseudo-terminal; `frames()` are the screens it drew."""

    def __init__(self, clipper: ClipperHarness):
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "clipper", "stats", clipper.env_name, "--watch",
                                      "--interval", "0.3"], cwd=clipper.root, env=clipper.env({"COLUMNS": "100"}),
                                     stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        self.output = ""

    def read(self) -> str:
        while select.select([self.master], [], [], 0.1)[0]:
            try:
                self.output += os.read(self.master, 65536).decode("utf-8", "replace")
            except OSError:
                break
        return self.output

    def frames(self) -> list[str]:
        return self.read().split(HOME_AND_CLEAR)[1:]

    def close(self) -> int:
        os.killpg(self.proc.pid, signal.SIGINT)  # Ctrl-C: the view ends cleanly
        code = self.proc.wait(10)
        self.read()
        os.close(self.master)
        return code


def test_percent_rises_to_100_in_redis_on_events_and_on_the_watch_screen(clipper: ClipperHarness, http) -> None:
    clipper.configure(**{"workers.count": 1, "workers.ffmpeg_threads": 1, "media.x264_preset": "faster"})
    clipper.start()
    events = EventLog(clipper, "enc")
    screen = Screen(clipper)
    try:
        clipper.push({"id": "enc", "source": http.url("/media/sample.mp4"),
                      "clips": [{"name": "long", "start": 0, "end": 20, "mode": "accurate"}]})
        in_record: list[float] = []
        bar_line = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = clipper.job("enc")
            if "percent" in job and (not in_record or float(job["percent"]) != in_record[-1]):
                in_record.append(float(job["percent"]))
            for frame in screen.frames()[-3:]:
                line = next((ln for ln in frame.splitlines() if "enc" in ln and BAR.search(ln)), None)
                if line and 0 < float(BAR.search(line)[1]) < 100:
                    bar_line = line
            if job.get("status") in ("done", "failed"):
                break
            time.sleep(0.05)
        assert clipper.wait_job("enc")["status"] == "done"
        clipper.wait_until(lambda: events.events and events.events[-1].get("status") == "done", 10, "the done event")
    finally:
        code = screen.close()
        events.close()
    assert code == 0
    assert in_record[0] == 0.0 and in_record[-1] == 100.0, in_record
    assert in_record == sorted(in_record) and any(0 < p < 100 for p in in_record), in_record
    published = [e["percent"] for e in events.events if "percent" in e]
    assert published[0] == 0.0 and published[-1] == 100.0 and published == sorted(published), published
    assert any(e.get("progress") == "clip" and e.get("eta") is not None for e in events.events)
    assert bar_line is not None, screen.output[-2000:]
    assert "clip" in bar_line
