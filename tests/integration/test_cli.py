"""The `clipper` command line against a real Redis and the real detached daemon."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

from services import free_port, pid_gone, wait_for

if TYPE_CHECKING:
    from conftest import ClipperHarness

ENV = "test"  # the harness writes settings/test.toml


def good_message(http, job_id: str, **extra) -> dict:
    return {"id": job_id, "source": http.url("/media/short.mp4"), "clips": [{"name": "a", "start": 0, "end": 2}], **extra}


# -- start / status / stop --------------------------------------------------------------------------

def test_start_prints_pid_and_status_reports_it(clipper: ClipperHarness) -> None:
    pid = clipper.start()
    assert not pid_gone(pid)
    assert clipper.pid_file.read_text().strip() == str(pid)
    status = clipper.status()
    assert status.returncode == 0, status
    assert str(pid) in status.stdout


def test_second_start_is_refused_naming_the_pid(clipper: ClipperHarness) -> None:
    pid = clipper.start()
    again = clipper.cli("start", ENV)
    assert again.returncode == 1, again
    assert str(pid) in again.stdout + again.stderr
    assert clipper.running_pid() == pid  # the first one is untouched


def test_stop_when_idle_then_status_3(clipper: ClipperHarness) -> None:
    pid = clipper.start()
    stop = clipper.stop(timeout=20)
    assert stop.returncode == 0, stop
    assert pid_gone(pid)
    status = clipper.status()
    assert status.returncode == 3, status


def test_stop_and_status_when_never_started(clipper: ClipperHarness) -> None:
    assert clipper.status().returncode == 3
    stop = clipper.stop(timeout=5)
    assert stop.returncode == 0, stop


def test_stale_pid_file_is_no_obstacle(clipper: ClipperHarness) -> None:
    clipper.pid_file.parent.mkdir(parents=True, exist_ok=True)
    clipper.pid_file.write_text("999999\n")  # left by a kill -9 long ago
    assert clipper.status().returncode == 3
    pid = clipper.start()
    assert clipper.running_pid() == pid


def test_restart_after_kill9_takes_the_lock(clipper: ClipperHarness) -> None:
    first = clipper.start()
    clipper.kill9(first)
    assert clipper.status().returncode == 3
    second = clipper.start()
    assert second != first and clipper.running_pid() == second


def test_unknown_env_lists_the_known_ones(clipper: ClipperHarness) -> None:
    for command in ("start", "status", "stats"):
        r = clipper.cli(command, "no-such-env")
        assert r.returncode not in (0, 3), (command, r)
        out = r.stdout + r.stderr
        assert "no-such-env" in out and ENV in out, (command, out)


def test_start_with_unreachable_redis_fails_with_one_line(clipper: ClipperHarness) -> None:
    clipper.configure(**{"redis.url": f"redis://127.0.0.1:{free_port()}/0"})
    r = clipper.cli("start", ENV, timeout=60)
    assert r.returncode == 1, r
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "redis" in lines[0].lower(), lines
    assert clipper.status().returncode == 3  # nothing left running


def test_start_with_invalid_settings_fails_naming_the_key(clipper: ClipperHarness) -> None:
    clipper.configure(**{"workers.cuont": 3})
    r = clipper.cli("start", ENV)
    assert r.returncode == 1, r
    assert "cuont" in r.stderr
    clipper.configure(**{"workers.cuont": None})
    assert clipper.status().returncode == 3


def test_start_with_unwritable_log_fails(clipper: ClipperHarness) -> None:
    blocker = clipper.root / "blocker"
    blocker.write_text("a file where a directory should be (unwritable even for root)")
    clipper.configure(**{"daemon.log_file": str(blocker / "clipper.log")})
    r = clipper.cli("start", ENV)
    assert r.returncode == 1, r
    assert len([line for line in r.stderr.splitlines() if line.strip()]) == 1, r.stderr
    assert clipper.status().returncode == 3


def test_environment_overrides_settings_file(clipper: ClipperHarness) -> None:
    # the file points at a closed port; the environment variable wins
    good_url = clipper.setting("redis.url")
    clipper.configure(**{"redis.url": f"redis://127.0.0.1:{free_port()}/0"})
    r = clipper.cli("stats", ENV, "--json", env={"CLIPPER_REDIS__URL": good_url})
    assert r.returncode == 0, r


def test_run_in_foreground_and_sigint_drains(clipper: ClipperHarness) -> None:
    with open(clipper.root / "run.out", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "clipper", "run", ENV], cwd=clipper.root, env=clipper.env(),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        pid = wait_for(clipper.running_pid, 30, "the foreground daemon to hold its pid lock")
        assert pid == proc.pid
        wait_for(lambda: clipper.r.scard(clipper.key("consumers")), 15, "the daemon's heartbeat")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, (clipper.root / "run.out").read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert clipper.status().returncode == 3


def test_reload_reopens_the_log_file(clipper: ClipperHarness, http) -> None:
    clipper.start()
    rotated = clipper.log_file.with_name("clipper.log.1")
    clipper.log_file.rename(rotated)  # what logrotate does before it signals
    r = clipper.cli("reload", ENV)
    assert r.returncode == 0, r
    clipper.push(good_message(http, "after-rotate"))
    assert clipper.wait_job("after-rotate")["status"] == "done"
    clipper.wait_until(lambda: any(e.get("job_id") == "after-rotate" for e in clipper.log_events()), 10,
                       "the job's events in the reopened log file")
    assert rotated.stat().st_size > 0


# -- enqueue ----------------------------------------------------------------------------------------

def test_enqueue_valid_message_prints_id_and_pushes(clipper: ClipperHarness, http) -> None:
    msg = json.dumps(good_message(http, "cli-1"))
    r = clipper.cli("enqueue", ENV, msg)
    assert r.returncode == 0, r
    assert r.stdout.strip() == "cli-1"
    items = clipper.pending()
    assert len(items) == 1
    assert json.loads(items[0])["id"] == "cli-1"


def test_enqueue_from_stdin(clipper: ClipperHarness, http) -> None:
    r = clipper.cli("enqueue", ENV, "-", input=json.dumps(good_message(http, "cli-stdin")))
    assert r.returncode == 0, r
    assert r.stdout.strip() == "cli-stdin"
    assert len(clipper.pending()) == 1


def test_enqueue_without_id_prints_a_stable_derived_id(clipper: ClipperHarness, http) -> None:
    msg = json.dumps({"source": http.url("/media/short.mp4"), "clips": [{"name": "a", "start": 0, "end": 1}]})
    first = clipper.cli("enqueue", ENV, msg)
    second = clipper.cli("enqueue", ENV, msg)
    assert first.returncode == 0 and second.returncode == 0
    assert first.stdout.strip() and first.stdout.strip() == second.stdout.strip()


def test_enqueue_invalid_exits_2_and_pushes_nothing(clipper: ClipperHarness, http) -> None:
    for bad in ("{not json", json.dumps({"source": "gopher://127.0.0.1/x"}),
                json.dumps({"source": http.url("/media/short.mp4"), "clips": [{"name": "a", "start": 5, "end": 1}]}),
                json.dumps({"source": http.url("/media/short.mp4"), "colour": "red"}),
                # sources the daemon would refuse anyway: refused at once, naming why
                "file:///etc/passwd", "http://169.254.169.254/latest/meta-data", "s3://Not_A_Bucket/k.mp4",
                # numeric host forms the resolver reads as 169.254.169.254 and 0.0.0.0
                "http://0xa9fea9fe/latest/meta-data", "http://0/x.mp4", "http://0251.0376.0251.0376/x"):
        r = clipper.cli("enqueue", ENV, bad)
        assert r.returncode == 2, (bad, r)
        assert r.stderr.strip(), bad
    assert "allow_file_roots" in clipper.cli("enqueue", ENV, "file:///etc/passwd").stderr
    assert "link-local" in clipper.cli("enqueue", ENV, "http://169.254.169.254/x").stderr
    assert clipper.pending() == []


# -- stats ------------------------------------------------------------------------------------------

def test_stats_json_shows_depths(clipper: ClipperHarness, http) -> None:
    for i in range(3):
        clipper.push(good_message(http, f"s{i}"))
    clipper.r.sadd(clipper.key("consumers"), "someone")  # a consumer that died holding an item
    clipper.r.lpush(clipper.key("processing:someone"), b"held")
    clipper.r.zadd(clipper.key("retry"), {b"0000abcd|later": 9e9})
    clipper.r.lpush(clipper.key("dead"), json.dumps({"raw": "x", "id": "x", "error": {"kind": "permanent",
                                                     "message": "m"}, "attempts": 1, "failed_at": 1.0}))
    r = clipper.cli("stats", ENV, "--json")
    assert r.returncode == 0, r
    stats = json.loads(r.stdout)
    assert stats["pending"] == 3
    assert stats["processing"] == 1
    assert stats["retry"] == 1
    assert stats["dead"] == 1
    human = clipper.cli("stats", ENV)
    assert human.returncode == 0 and "3" in human.stdout


def test_stats_shows_live_consumer(clipper: ClipperHarness) -> None:
    pid = clipper.start()
    stats = json.loads(clipper.cli("stats", ENV, "--json").stdout)
    assert len(stats["consumers"]) == 1
    assert str(pid) in json.dumps(stats["consumers"])


# -- dead letters -----------------------------------------------------------------------------------

def test_dead_list_retry_purge(clipper: ClipperHarness, http) -> None:
    clipper.start()
    for job_id in ("bad1", "bad2"):
        clipper.push({"id": job_id, "source": http.url(f"/404/{job_id}.mp4"),
                      "clips": [{"name": "a", "start": 0, "end": 1}]})
    clipper.wait_jobs(["bad1", "bad2"])
    assert clipper.stop(timeout=20).returncode == 0

    listed = clipper.cli("dead", ENV, "list")
    assert listed.returncode == 0, listed
    assert "bad1" in listed.stdout and "bad2" in listed.stdout
    assert "404" in listed.stdout

    retried = clipper.cli("dead", ENV, "retry", "bad1")
    assert retried.returncode == 0, retried
    assert [d["id"] for d in clipper.dead()] == ["bad2"]
    assert [json.loads(i)["id"] for i in clipper.pending()] == ["bad1"]

    purged = clipper.cli("dead", ENV, "purge")
    assert purged.returncode == 0, purged
    assert clipper.dead() == []
    assert clipper.cli("dead", ENV, "list").stdout.strip() == ""
    assert len(clipper.pending()) == 1  # purge touches only dead letters


def test_dead_retry_all_runs_them_again(clipper: ClipperHarness, http) -> None:
    # dead letters of a source that was missing and has since appeared
    for job_id in ("later1", "later2"):
        clipper.r.lpush(clipper.key("dead"), json.dumps({
            "raw": json.dumps({"id": job_id, "source": http.url("/media/short.mp4"),
                               "clips": [{"name": "a", "start": 0, "end": 1}]}),
            "id": job_id, "error": {"kind": "permanent", "message": "404"}, "attempts": 1, "failed_at": 1.0}))
    r = clipper.cli("dead", ENV, "retry")
    assert r.returncode == 0, r
    assert clipper.dead() == [] and len(clipper.pending()) == 2
    clipper.start()
    jobs = clipper.wait_jobs(["later1", "later2"])
    assert {j["status"] for j in jobs.values()} == {"done"}


def test_dead_letters_beyond_the_limit_are_dropped_oldest_first_and_counted(clipper: ClipperHarness) -> None:
    clipper.configure(**{"workers.count": 1, "dead.max_entries": 3})
    for i in range(5):  # one worker: buried in the order pushed
        clipper.push(json.dumps({"id": f"bad{i}", "source": "gopher://x/"}))
    clipper.start()
    clipper.wait_jobs([f"bad{i}" for i in range(5)])
    clipper.wait_until(lambda: len(clipper.dead()) == 3, 10, "retention to trim the dead letters")
    assert [d["id"] for d in clipper.dead()] == ["bad4", "bad3", "bad2"]
    stats = json.loads(clipper.cli("stats", ENV, "--json").stdout)
    assert stats["dead"] == 3 and stats["dead_dropped"] == 2

    shown = clipper.cli("dead", ENV, "show", "bad3")
    assert shown.returncode == 0, shown
    letter = json.loads(shown.stdout)
    assert letter["id"] == "bad3" and letter["message"] == {"id": "bad3", "source": "gopher://x/"}
    assert "gopher" in letter["error"]["message"]
    gone = clipper.cli("dead", ENV, "show", "bad0")
    assert gone.returncode == 1 and "no dead letter" in gone.stderr
