"""The progress writer (clipper.observer.ProgressWriter): a job's quick reports become one
write, nothing is lost of what the record ends with, and `flush` lands before the outcome."""

from __future__ import annotations

import threading
import time

from clipper.observer import WRITE_GAP, ProgressWriter


class Recorder:
    """The writes, in order (the real one is queue.set_progress); `hold` blocks a job's write."""

    def __init__(self) -> None:
        self.writes: list[tuple] = []
        self.hold: dict[str, threading.Event] = {}
        self.started = threading.Event()

    def __call__(self, job_id: str, stage: str, percent: float | None, eta: float | None) -> None:
        if job_id in self.hold:
            self.started.set()
            self.hold[job_id].wait(10)
        self.writes.append((job_id, stage, percent, eta))


def test_quick_reports_of_a_job_become_one_write_with_what_the_record_would_end_with() -> None:
    rec = Recorder()
    writer = ProgressWriter(rec)
    try:
        for stage, percent, eta in (("fetch", 0.0, None), ("probe", None, None), ("clip", 0.0, 3.0),
                                    ("clip", 100.0, 0.0), ("upload", None, None)):
            writer.put("a", stage, percent, eta)
        writer.put("b", "probe", 0.0, None)
        deadline = time.monotonic() + 5
        while len(rec.writes) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(2 * WRITE_GAP)
        # one write each; "upload" keeps the 100 % that the clip reached (no percent: unchanged)
        assert sorted(rec.writes) == [("a", "upload", 100.0, None), ("b", "probe", 0.0, None)]
    finally:
        writer.close()


def test_flush_writes_at_once_after_a_write_in_flight_and_nothing_comes_later() -> None:
    rec = Recorder()
    rec.hold["a"] = threading.Event()
    writer = ProgressWriter(rec)
    try:
        writer.put("a", "clip", 50.0, 2.0)
        assert rec.started.wait(5)  # the writer thread is inside the write of a's report
        writer.put("a", "upload", None, None)  # the runner's last report, then it returns
        flushed = threading.Thread(target=writer.flush, args=("a",))
        flushed.start()
        time.sleep(0.1)
        assert flushed.is_alive() and rec.writes == []  # flush waits for the write in flight
        rec.hold.pop("a").set()
        flushed.join(5)
        assert rec.writes == [("a", "clip", 50.0, 2.0), ("a", "upload", None, None)]
        time.sleep(2 * WRITE_GAP)
        assert len(rec.writes) == 2  # nothing of a's is written after the flush (the outcome comes next)
    finally:
        writer.close()


def test_flush_takes_a_report_out_of_the_batch_being_written() -> None:
    rec = Recorder()
    rec.hold["x"] = threading.Event()
    writer = ProgressWriter(rec)
    try:
        writer.put("x", "clip", 10.0, None)
        writer.put("b", "upload", 100.0, None)  # the same batch, after x
        assert rec.started.wait(5)  # the thread is writing x; b waits in the batch
        writer.flush("b")  # b's runner returned: its report is written now, by the flush
        assert rec.writes == [("b", "upload", 100.0, None)]
        rec.hold.pop("x").set()
        time.sleep(2 * WRITE_GAP)
        assert rec.writes == [("b", "upload", 100.0, None), ("x", "clip", 10.0, None)]  # b once, never after
    finally:
        writer.close()
