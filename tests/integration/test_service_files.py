"""The shipped systemd unit and logrotate config, checked with the real tools: the unit passes
`systemd-analyze verify` and outlasts prod's drain; logrotate rotates a running daemon's log
and `clipper reload` moves its next lines to the new file, losing none."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from clipper.entry import CANCEL_GRACE
from clipper.settings import load_settings

if TYPE_CHECKING:
    from conftest import ClipperHarness

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "scripts" / "clipper.service"
LOGROTATE = REPO / "scripts" / "clipper.logrotate"
INSTALLED = "/usr/local/bin/clipper"  # where the README installs the command; here: this venv's
HERE = str(Path(sys.executable).parent / "clipper")


def test_systemd_unit_verifies_and_outlasts_the_prod_drain(tmp_path: Path) -> None:
    unit = tmp_path / "clipper.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED, HERE))  # verify insists that ExecStart exists
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    service = parser["Service"]
    prod = load_settings("prod", environ={}, cwd=REPO)
    assert float(service["TimeoutStopSec"]) > prod.daemon.stop_timeout + CANCEL_GRACE
    assert service["KillMode"] == "mixed"  # SIGTERM to clipper only: its ffmpeg children drain
    assert service["ExecStart"] == f"{INSTALLED} run prod"


def job(http, job_id: str) -> dict:
    return {"id": job_id, "source": http.url("/media/short.mp4"), "clips": [{"name": "a", "start": 0, "end": 1}]}


def json_lines(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    parsed = [json.loads(line) for line in lines]  # a torn line would not parse
    return parsed


def test_logrotate_rotates_a_running_daemons_log_without_losing_a_line(clipper: ClipperHarness, http,
                                                                       tmp_path: Path) -> None:
    clipper.configure(**{"workers.count": 2})
    shutil.copy(clipper.write_settings(), clipper.root / "settings" / "prod.toml")  # the config says `reload prod`
    clipper.start()
    before = ["r1", "r2", "r3"]
    for job_id in before:
        clipper.push(job(http, job_id))
    conf = tmp_path / "logrotate.conf"
    conf.write_text(LOGROTATE.read_text().replace(INSTALLED, HERE).replace("/var/log/clipper/*.log", str(clipper.log_file)))
    env = clipper.env({"PATH": f"{Path(HERE).parent}{os.pathsep}{os.environ['PATH']}"})
    rotate = subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "state"), str(conf)], cwd=clipper.root, env=env,
                            capture_output=True, text=True, timeout=60)
    assert rotate.returncode == 0, rotate.stderr
    rotated = clipper.log_file.with_name(clipper.log_file.name + ".1")  # delaycompress: plain text until next time
    assert rotated.is_file()
    clipper.wait_until(lambda: any(e.get("event") == "log.reopened" for e in clipper.log_events()), 10,
                       "the daemon to reopen its log")
    after = ["r4", "r5"]
    for job_id in after:
        clipper.push(job(http, job_id))
    clipper.wait_jobs(before + after)
    clipper.wait_until(lambda: sum(e.get("event") == "job.done" for e in clipper.log_events()) >= len(after), 10,
                       "the last lines")
    old, new = json_lines(rotated), json_lines(clipper.log_file)
    assert any(e["event"] == "daemon.ready" for e in old)
    assert {e.get("job_id") for e in new if e["event"] == "job.done"} >= set(after)
    for event in ("job.claimed", "job.done"):  # each job's lines are in one file or the other, once
        seen = sorted(e["job_id"] for e in old + new if e["event"] == event)
        assert seen == sorted(before + after), (event, seen)
