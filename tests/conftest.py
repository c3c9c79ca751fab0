"""Fixtures that start real services once per session and reset them between tests, and the
`clipper` harness that runs the real command line (and so the real detached daemon).

Services: `redis_server` (a private redis-server with AOF), `s3_server` (SeaweedFS `weed mini`,
started only when a test asks for it), `media_server` (HTTP with test routes), `media_dir`
(sample media made with ffmpeg). Per test: `redis` (FLUSHALL), `s3` (empty bucket), `http`
(request log reset), `clipper` / `clipper_factory` (a daemon home in tmp_path).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from redis_topologies import ClusterSet, SentinelSet
from services import (
    MediaHTTPServer,
    RedisServer,
    SeaweedS3,
    locked_pid,
    make_hostile_media,
    make_media,
    pid_gone,
    processes_mentioning,
    wait_for,
)

from clipper.jobs.spec import job_id_for_raw
from clipper.schemas import schema_error

REPO = Path(__file__).resolve().parent.parent
QUEUE = "clipper:jobs"
ENV = "test"

DEFAULT_SETTINGS: dict[str, dict[str, Any]] = {
    "redis": {"url": None, "queue": QUEUE},
    "daemon": {"pid_file": "var/run/clipper.pid", "log_file": "var/log/clipper.log", "work_dir": "var/work",
               "stop_timeout": 10},
    "workers": {"count": 2},
    "fetch": {"allow_private": True, "timeout": 30},
    "output": {"kind": "dir", "dir": "var/clips", "prefix": "clips"},
    "retry": {"max_attempts": 3, "backoff_base": 0.2, "backoff_max": 1},
}

FINISHED = ("done", "failed", "cancelled")


# -- services ------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[redis_lib.Redis]:
    """A client of the session's Redis, emptied before the test (and restarted if a test
    stopped it and failed before bringing it back)."""
    if not redis_server.running:
        redis_server.start()
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    # Any key works with SeaweedFS without IAM; daemons started by the harness inherit these.
    os.environ["AWS_ACCESS_KEY_ID"] = "test"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "test"
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed")).start()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server: SeaweedS3) -> Any:
    s3_server.empty_bucket()
    return s3_server.client()


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_media(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="session")
def hostile_media(media_dir: Path) -> Path:
    """huge.mp4 and tall.mp4 (see services.make_hostile_media) beside the sample media, so the
    media server serves them; made only when a test asks."""
    return make_hostile_media(media_dir)


@pytest.fixture(scope="session")
def media_server(media_dir: Path) -> Iterator[MediaHTTPServer]:
    server = MediaHTTPServer(media_dir).start()
    yield server
    server.stop()


@pytest.fixture
def http(media_server: MediaHTTPServer) -> MediaHTTPServer:
    """The media server with a fresh request log, flaky counters and default slow rate."""
    media_server.reset()
    return media_server


# -- the clipper harness --------------------------------------------------------------------------

def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))  # JSON string escapes are valid TOML basic strings
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(settings: dict[str, dict[str, Any]]) -> str:
    lines = []
    for section, values in settings.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(v)}" for key, v in values.items() if v is not None]
        lines.append("")
    return "\n".join(lines)


def _decode(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class ClipperHarness:
    """A daemon home: `root/settings/test.toml`, relative paths under `root`, the real CLI."""

    env_name = ENV

    def __init__(self, root: Path, redis_url: str, client: redis_lib.Redis, **overrides: Any):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.r = client
        self.settings: dict[str, dict[str, Any]] = {k: dict(v) for k, v in DEFAULT_SETTINGS.items()}
        self.settings["redis"]["url"] = redis_url
        self.pid: int | None = None
        self.pushed: dict[str, bytes] = {}  # job id -> raw message, for the contract checks of wait_job
        self.configure(**overrides)

    # -- settings ---------------------------------------------------------------------------------
    def configure(self, **overrides: Any) -> ClipperHarness:
        """`configure(**{"workers.count": 1, "output.kind": "s3"})`; a value of None removes the key."""
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            if not key:
                raise ValueError(f"expected section.key, got {dotted!r}")
            self.settings.setdefault(section, {})[key] = value
            if value is None:
                del self.settings[section][key]
        self.write_settings()
        return self

    def use_s3(self, s3_server: SeaweedS3, **extra: Any) -> ClipperHarness:
        return self.configure(**{"output.kind": "s3", "output.bucket": s3_server.bucket,
                                 "output.endpoint_url": s3_server.endpoint_url, "output.region": "us-east-1",
                                 **extra})

    def write_settings(self) -> Path:
        path = self.root / "settings" / f"{ENV}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_toml(self.settings))
        return path

    def setting(self, dotted: str) -> Any:
        section, _, key = dotted.partition(".")
        return self.settings[section][key]

    @property
    def queue(self) -> str:
        return self.settings["redis"]["queue"]

    def _path(self, dotted: str) -> Path:
        p = Path(self.setting(dotted))
        return p if p.is_absolute() else self.root / p

    @property
    def pid_file(self) -> Path:
        return self._path("daemon.pid_file")

    @property
    def log_file(self) -> Path:
        return self._path("daemon.log_file")

    @property
    def output_dir(self) -> Path:
        return self._path("output.dir")

    def output_path(self, key: str) -> Path:
        return self.output_dir / key

    # -- the command line -------------------------------------------------------------------------
    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPPER_")}
        env["CLIPPER_SETTINGS_DIR"] = str(self.root / "settings")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env.setdefault("AWS_ACCESS_KEY_ID", "test")
        env.setdefault("AWS_SECRET_ACCESS_KEY", "test")
        env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        env["AWS_EC2_METADATA_DISABLED"] = "true"  # never let boto3 look for instance credentials
        env.update(extra or {})
        return env

    def cli(self, *args: str, input: str | None = None, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        self.write_settings()
        return subprocess.run([sys.executable, "-m", "clipper", *map(str, args)], cwd=self.root, env=self.env(env),
                              input=input, capture_output=True, text=True, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def start(self, *args: str) -> int:
        r = self.cli("start", ENV, *args)
        assert r.returncode == 0, f"clipper start failed (rc {r.returncode}): {r.stdout}{r.stderr}\n{self.diagnostics()}"
        m = re.search(r"\b(\d+)\b", r.stdout)
        assert m, f"clipper start printed no pid: {r.stdout!r}"
        self.pid = int(m[1])
        return self.pid

    def stop(self, timeout: float | None = None) -> subprocess.CompletedProcess:
        args = ["stop", ENV] + (["--timeout", str(timeout)] if timeout is not None else [])
        wait = (timeout if timeout is not None else float(self.setting("daemon.stop_timeout")) + 15) + 30
        return self.cli(*args, timeout=wait)

    def status(self) -> subprocess.CompletedProcess:
        return self.cli("status", ENV)

    def running_pid(self) -> int | None:
        r = self.status()
        m = re.search(r"\b(\d+)\b", r.stdout)
        return int(m[1]) if r.returncode == 0 and m else None

    def start_slow_encode(self, http, **settings: Any) -> bytes:
        """Start the daemon with one worker on a re-encode that takes ~20 s (slowest x264
        preset, one thread) and return its raw item once ffmpeg is encoding."""
        self.configure(**{"workers.count": 1, "workers.ffmpeg_threads": 1, "media.x264_preset": "veryslow", **settings})
        self.start()
        raw = self.push({"id": "encode", "source": http.url("/media/sample.mp4"),
                         "clips": [{"name": "long", "start": 0, "end": 28, "mode": "accurate"}]})
        marker = str(self.root) + os.sep
        self.wait_until(lambda: any("ffmpeg" in cmd for _, cmd in processes_mentioning(marker)), 20,
                        "ffmpeg to be encoding")
        return raw

    def kill9(self, pid: int | None = None) -> None:
        """kill -9 the daemon (as the OOM killer or a power cut would) and wait until it is gone."""
        pid = pid or self.pid
        assert pid, "no daemon pid to kill"
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: pid_gone(pid), 10, f"pid {pid} to die")

    # -- the queue --------------------------------------------------------------------------------
    def key(self, suffix: str = "") -> str:
        return f"{self.queue}:{suffix}" if suffix else self.queue

    def push(self, msg: dict | list | str | bytes) -> bytes:
        """LPUSH a message (a dict/list is JSON-encoded; str/bytes go as they are); returns the raw item."""
        raw = json.dumps(msg).encode() if isinstance(msg, (dict, list)) else msg
        raw = raw.encode() if isinstance(raw, str) else raw
        self.r.lpush(self.queue, raw)
        self.pushed[job_id_for_raw(raw)] = raw
        return raw

    def job(self, job_id: str) -> dict[str, str]:
        return {_decode(k): _decode(v) for k, v in self.r.hgetall(self.key(f"job:{job_id}")).items()}

    def result(self, job_id: str) -> dict[str, Any]:
        job = self.job(job_id)
        assert "result" in job, f"job {job_id} has no result: {job}"
        return json.loads(job["result"])

    def wait_job(self, job_id: str, statuses: Iterable[str] = FINISHED, timeout: float = 60) -> dict[str, str]:
        statuses = tuple(statuses)
        deadline = time.monotonic() + timeout
        job: dict[str, str] = {}
        while time.monotonic() < deadline:
            try:
                job = self.job(job_id)
            except redis_lib.ConnectionError:
                job = {}
            if job.get("status") in statuses:
                self.check_contract(job_id, job)
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} not {'/'.join(statuses)} within {timeout:g} s: {job}\n{self.diagnostics()}")

    def check_contract(self, job_id: str, job: dict[str, str]) -> None:
        """Every result the tests see matches the result schema, and every message of the test
        suite that a daemon did matches the message schema (a plain URL that is not JSON aside)."""
        if "result" in job:
            error = schema_error("result", json.loads(job["result"]))
            assert error is None, f"the result of {job_id} does not match the result schema: {error}"
        raw = self.pushed.get(job_id)
        if job.get("status") == "done" and raw is not None:
            try:
                message = json.loads(raw)
            except ValueError:
                return
            error = schema_error("message", message)
            assert error is None, f"job {job_id} was done, but its message does not match the schema: {error}"

    def reply(self, key: str, timeout: float = 10) -> dict[str, Any]:
        """The next reply on `key` (a reply_to list). Replies go out from the outbox just after
        the job's record is written, so a test that saw the record waits for the reply."""
        popped = self.r.brpop([key], timeout=timeout)
        assert popped is not None, f"no reply on {key} within {timeout} s\n{self.diagnostics()}"
        return json.loads(popped[1])

    def wait_jobs(self, job_ids: Iterable[str], statuses: Iterable[str] = FINISHED,
                  timeout: float = 60) -> dict[str, dict[str, str]]:
        deadline = time.monotonic() + timeout
        return {j: self.wait_job(j, statuses, timeout=max(0.1, deadline - time.monotonic())) for j in job_ids}

    def wait_until(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        try:
            return wait_for(predicate, timeout, what)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.diagnostics()}") from None

    def pending(self) -> list[bytes]:
        return self.r.lrange(self.queue, 0, -1)

    def processing_keys(self) -> list[str]:
        return sorted(_decode(k) for k in self.r.scan_iter(match=self.key("processing:*"), count=1000))

    def processing(self) -> list[bytes]:
        """Every item held in any consumer's processing list."""
        return [item for k in self.processing_keys() for item in self.r.lrange(k, 0, -1)]

    def retrying(self) -> list[bytes]:
        return self.r.zrange(self.key("retry"), 0, -1)

    def dead(self) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.r.lrange(self.key("dead"), 0, -1)]

    def places(self, raw: bytes) -> list[str]:
        """Where an item is: any of Q, processing:<consumer>, retry, dead; [] once acknowledged."""
        found = ["Q"] * self.pending().count(raw)
        for k in self.processing_keys():
            found += ["processing"] * self.r.lrange(k, 0, -1).count(raw)
        # retry members may carry a prefix (two equal items must stay two members of the zset)
        found += ["retry"] * sum(1 for m in self.retrying() if m.endswith(raw))
        text = raw.decode("utf-8", "replace")
        found += ["dead"] * sum(1 for d in self.dead() if d.get("raw") == text)
        return found

    def depths(self) -> dict[str, int]:
        return {"pending": len(self.pending()), "processing": len(self.processing()),
                "retry": len(self.retrying()), "dead": self.r.llen(self.key("dead"))}

    # -- the log ----------------------------------------------------------------------------------
    def log_lines(self) -> list[str]:
        try:
            return self.log_file.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON objects of the log file (lines that are not JSON, e.g. a traceback, are skipped)."""
        events = []
        for line in self.log_lines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                events.append(obj)
        return events

    def diagnostics(self, log_lines: int = 25) -> str:
        try:
            depths = self.depths()
        except redis_lib.RedisError as exc:
            depths = f"(Redis: {exc})"
        tail = "\n".join(self.log_lines()[-log_lines:])
        return f"--- queue: {depths}\n--- last log lines of {self.log_file}:\n{tail}"

    # -- teardown ---------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop a running daemon (kill -9 if it will not stop), then insist that no process of
        ours (wget, ffmpeg, ffprobe...) is left behind."""
        pid = self.running_pid() or locked_pid(self.pid_file)
        if pid:
            try:
                r = self.stop(timeout=30)
                stopped = r.returncode == 0
            except subprocess.TimeoutExpired:
                stopped = False
            if not stopped and not pid_gone(pid):
                os.kill(pid, signal.SIGKILL)
                wait_for(lambda: pid_gone(pid), 10, f"pid {pid} to die")
        marker = str(self.root) + os.sep
        try:
            wait_for(lambda: not processes_mentioning(marker), 10, "the daemon's child processes to exit")
        except TimeoutError:
            leftovers = processes_mentioning(marker)
            for child, _ in leftovers:
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if leftovers:
                raise AssertionError(f"processes left behind by the daemon: {leftovers}") from None


def _harness_factory(tmp_path: Path, redis_url: str, client: Any, **defaults: Any
                     ) -> Iterator[Callable[..., ClipperHarness]]:
    """`make(**overrides)` -> a new ClipperHarness; the first lives in tmp_path itself, later
    ones in tmp_path/d1, d2... (different pid files, so different consumer ids). Every daemon
    is torn down afterwards."""
    made: list[ClipperHarness] = []

    def make(**overrides: Any) -> ClipperHarness:
        root = tmp_path if not made else tmp_path / f"d{len(made)}"
        harness = ClipperHarness(root, redis_url, client, **{**defaults, **overrides})
        made.append(harness)
        return harness

    yield make
    errors = []
    for harness in reversed(made):
        try:
            harness.shutdown()
        except Exception as exc:  # noqa: BLE001 - tear every daemon down, then report
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def clipper_factory(tmp_path: Path, redis_server: RedisServer, redis: redis_lib.Redis
                    ) -> Iterator[Callable[..., ClipperHarness]]:
    """`clipper_factory(**overrides)` -> a new ClipperHarness on the session's Redis."""
    yield from _harness_factory(tmp_path, redis_server.url, redis)


@pytest.fixture
def clipper(clipper_factory: Callable[..., ClipperHarness]) -> ClipperHarness:
    return clipper_factory()


# -- production topologies (started once per session, only by the tests that ask) ----------------

CLUSTER_QUEUE = "{clipper}:jobs"  # a hash tag: every derived key in one slot


def _started(topology: SentinelSet | ClusterSet) -> Iterator[Any]:
    topology.start()
    yield topology
    topology.stop()


def _on_topology(tmp_path: Path, topology: SentinelSet | ClusterSet, **defaults: Any
                 ) -> Iterator[Callable[..., ClipperHarness]]:
    """Daemons on a topology made whole (a failover test may have left a node down) and emptied."""
    topology.restore()
    topology.flush()
    client = topology.client()
    yield from _harness_factory(tmp_path, topology.url(), client, **defaults)
    client.close()


@pytest.fixture(scope="session")
def sentinel_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    yield from _started(SentinelSet(tmp_path_factory.mktemp("sentinel")))


@pytest.fixture
def sentinel_clipper_factory(tmp_path: Path, sentinel_set: SentinelSet) -> Iterator[Callable[..., ClipperHarness]]:
    """Daemons on the Sentinel-managed master."""
    yield from _on_topology(tmp_path, sentinel_set)


@pytest.fixture(scope="session")
def cluster_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSet]:
    yield from _started(ClusterSet(tmp_path_factory.mktemp("cluster")))


@pytest.fixture
def cluster_clipper_factory(tmp_path: Path, cluster_set: ClusterSet) -> Iterator[Callable[..., ClipperHarness]]:
    """Daemons on the Redis Cluster, queue `{clipper}:jobs`."""
    yield from _on_topology(tmp_path, cluster_set, **{"redis.queue": CLUSTER_QUEUE})
