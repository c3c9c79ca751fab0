"""The README's local-S3 path from a clean copy of the repository: `make run ENV=local` starts a
SeaweedFS under var/ (none answers on the port), creates the bucket and runs the daemon in the
foreground; a job's outputs land in that bucket."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from services import free_port, pid_gone, wait_for

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent


def clean_copy(dest: Path) -> Path:
    """The files git would commit, as they are in this checkout: what a clone of this branch holds."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def test_make_run_local_puts_outputs_in_a_local_bucket(tmp_path: Path, redis_server, redis, media_dir: Path) -> None:
    clone = clean_copy(tmp_path / "clipper")
    (clone / "var" / "media").mkdir(parents=True)
    shutil.copy(media_dir / "short.mp4", clone / "var" / "media" / "short.mp4")  # local.toml allows file:// here
    endpoint = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPPER_", "AWS_"))}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    # the venv of this checkout stands in for `make install` (which would take a minute)
    with open(tmp_path / "make.log", "wb") as make_log:
        make = subprocess.Popen(["make", "-o", f"{VENV}/.installed", "run", "ENV=local", f"VENV={VENV}",
                                 f"DEV_REDIS_URL={redis_server.url}", f"LOCAL_S3_URL={endpoint}"],
                                cwd=clone, env=env, stdin=subprocess.DEVNULL, stdout=make_log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    log = clone / "var" / "log" / "clipper-local.log"
    weed_pid = clone / "var" / "run" / "seaweed.pid"
    try:
        wait_for(lambda: make.poll() is not None or (log.is_file() and '"daemon.ready"' in log.read_text()), 150,
                 "the daemon to be ready")
        assert make.poll() is None, (tmp_path / "make.log").read_text()
        message = {"id": "local-1", "source": f"file://{clone}/var/media/short.mp4", "clips": [{"name": "a", "start": 0, "end": 1}]}
        enqueue = subprocess.run([str(VENV / "bin" / "clipper"), "enqueue", "local", json.dumps(message)], cwd=clone,
                                 env={**env, "CLIPPER_REDIS__URL": redis_server.url}, capture_output=True, text=True, timeout=60)
        assert enqueue.returncode == 0, enqueue.stderr
        wait_for(lambda: redis.hget("clipper:jobs:job:local-1", "status") in (b"done", b"failed"), 60, "the job")
        assert redis.hget("clipper:jobs:job:local-1", "status") == b"done", redis.hgetall("clipper:jobs:job:local-1")
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="local",
                          aws_secret_access_key="local")
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="clips")["Contents"])
        assert keys == ["clips/local-1/a.mp4", "clips/local-1/manifest.json"]
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGINT)  # Ctrl-C: the daemon drains and exits
            make.wait(60)
        if weed_pid.is_file():
            pid = int(weed_pid.read_text())
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: pid_gone(pid), 20, "weed mini to stop")
