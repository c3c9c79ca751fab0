"""A local S3 for `make run ENV=local`: unless something answers at the endpoint, start SeaweedFS
(`weed mini`, installed with the test extras) under var/seaweed, detached, then make sure the
bucket exists. So a newcomer sees the production output path (S3) work without an AWS account.

    python scripts/local_s3.py --endpoint http://127.0.0.1:8333 --bucket clips

Every other SeaweedFS listener (master, volume, filer, their gRPC ports...) takes a free
loopback port, so only the S3 port must be free. `make clean` stops it (var/run/seaweed.pid).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

LISTENERS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
             "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "webdav.port", "admin.port", "admin.port.grpc")


def s3_client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    # SeaweedFS without IAM takes any key; the AWS chain's, when set, is what clipper will use
    return boto3.client("s3", endpoint_url=endpoint, region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "local"),
                        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "local"),
                        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=10))


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def free_ports(n: int, host: str) -> list[int]:
    """`n` distinct ports nobody listens on (held open together, so none is handed out twice)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def weed_binary() -> str:
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if not found:
        sys.exit("local_s3: SeaweedFS `weed` not found (make install puts it in .venv/bin)")
    return found


def start_weed(host: str, port: int, bucket: str, var: Path) -> int:
    data, logs, run = var / "seaweed", var / "log", var / "run"
    for d in (data, logs, run):
        d.mkdir(parents=True, exist_ok=True)
    ports = dict(zip(LISTENERS, free_ports(len(LISTENERS), host), strict=True))
    cmd = [weed_binary(), "mini", f"-dir={data.resolve()}", f"-ip={host}", f"-ip.bind={host}", f"-bucket={bucket}",
           f"-s3.port={port}", *(f"-{name}={p}" for name, p in ports.items())]
    with open(logs / "seaweed.log", "ab") as log:
        proc = subprocess.Popen(cmd, cwd=data, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # outlives `make`, like the var/ Redis
    (run / "seaweed.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def wait_for_bucket(endpoint: str, bucket: str, timeout: float, pid: int | None) -> None:
    """Until the bucket takes a write (a bucket can exist before a volume takes writes)."""
    client = s3_client(endpoint)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if pid is not None and not Path(f"/proc/{pid}").exists():
            sys.exit("local_s3: weed mini exited: see var/log/seaweed.log")
        try:
            try:
                client.head_bucket(Bucket=bucket)
            except client.exceptions.ClientError:
                client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key=".clipper-ready", Body=b"ok")
            client.delete_object(Bucket=bucket, Key=".clipper-ready")
            return
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = exc
            time.sleep(0.3)
    sys.exit(f"local_s3: bucket {bucket} at {endpoint} not writable within {timeout:g} s: {last}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", default="http://127.0.0.1:8333")
    p.add_argument("--bucket", default="clips")
    p.add_argument("--var", default="var", type=Path, help="where data, log and pid file go")
    p.add_argument("--timeout", type=float, default=90.0)
    args = p.parse_args(argv)
    url = urllib.parse.urlsplit(args.endpoint)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    pid = None
    if answers(host, port):
        print(f"S3 answers at {args.endpoint}")
    else:
        print(f"starting SeaweedFS under {args.var}/seaweed for {args.endpoint}")
        pid = start_weed(host, port, args.bucket, args.var)
    wait_for_bucket(args.endpoint, args.bucket, args.timeout, pid)
    print(f"bucket {args.bucket} takes writes at {args.endpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
