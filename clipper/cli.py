"""The `clipper` command: start | stop | status | run | restart | reload | enqueue | stats | dead.

Exit codes: 0 ok; 1 failure (with a one-line reason on stderr); 2 invalid message or usage;
3 `status` when not running (LSB).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import redis

from clipper import __version__
from clipper.connections import connect_redis, wait_policy
from clipper.daemon import Readiness, live, lock_holder, start_detached, stop_and_wait
from clipper.errors import PermanentError, SettingsError
from clipper.queue import ReliableQueue, default_consumer_id, unreachable
from clipper.settings import Settings, load_settings


def _fail(message: str, code: int = 1) -> int:
    print(f"clipper: {message}", file=sys.stderr)
    return code


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    workers: dict[str, Any] = {}
    if getattr(args, "workers", None) is not None:
        workers["count"] = args.workers
    if getattr(args, "ffmpeg_threads", None) is not None:
        workers["ffmpeg_threads"] = args.ffmpeg_threads
    daemon: dict[str, Any] = {}
    if getattr(args, "stop_timeout", None) is not None:
        daemon["stop_timeout"] = args.stop_timeout
    return {"workers": workers, "daemon": daemon}


def _unreachable(settings: Settings, exc: Exception) -> str:
    return unreachable(settings.redis, exc)


def _queue(settings: Settings) -> ReliableQueue:
    from clipper.jobs.spec import job_id_for_raw

    return ReliableQueue(connect_redis(settings.redis), settings.redis.queue, default_consumer_id(str(settings.daemon.pid_file)),
                         job_id_of=job_id_for_raw, result_ttl=settings.results.ttl, wait=wait_policy(settings.redis))


def _check_writable(settings: Settings) -> str | None:
    """Fail `start` with a clear reason before detaching, while a terminal can still see it."""
    for what, path in (("daemon.pid_file", settings.daemon.pid_file), ("daemon.log_file", settings.daemon.log_file)):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a"):
                pass
        except OSError as exc:
            return f"cannot write {what} {path}: {exc.strerror} (run as a user that can, or set {what})"
    for what, path in (("daemon.work_dir", settings.daemon.work_dir),) + (
            (("output.dir", settings.output.dir),) if settings.output.kind == "dir" else ()):
        try:
            path.mkdir(parents=True, exist_ok=True)
            if not os.access(path, os.W_OK):
                raise PermissionError(13, "Permission denied")
        except OSError as exc:
            return f"cannot write {what} {path}: {exc.strerror}"
    return None


def daemon_main(settings: Settings, readiness: Readiness, *, foreground: bool) -> int:
    """The daemon's life (clipper.daemon.live) around the loop (clipper.entry.Supervisor)."""
    from clipper.entry import Supervisor

    return live(settings, readiness, Supervisor, foreground=foreground)


def _cannot_start(settings: Settings) -> str | None:
    """Why a daemon cannot start, said on the terminal before anything detaches."""
    pid = lock_holder(settings.daemon.pid_file)
    if pid:
        return f"already running (pid {pid})"
    return _check_writable(settings)


def cmd_start(args: argparse.Namespace, settings: Settings) -> int:
    problem = _cannot_start(settings)
    if problem:
        return _fail(problem)
    ok, detail = start_detached(lambda readiness: daemon_main(settings, readiness, foreground=False), wait=args.wait)
    if not ok:
        return _fail(f"start failed: {detail}")
    print(detail)
    return 0


def _waiting_for(queue: ReliableQueue) -> str | None:
    try:
        held, jobs = queue.own_holdings()
    except (redis.RedisError, ValueError):
        return "in-flight jobs to finish (Redis not reachable from here to say which)"
    if not held:
        return None
    names = ", ".join(jobs[:10])
    return f"{held} in-flight job(s) to finish or be requeued" + (f": {names}" if names else "")


def cmd_stop(args: argparse.Namespace, settings: Settings) -> int:
    timeout = args.timeout if args.timeout is not None else settings.daemon.stop_timeout + 15
    queue = _queue(settings)  # one connection pool for the whole wait
    ok = stop_and_wait(settings.daemon.pid_file, timeout, report=lambda m: print(f"clipper: {m}", flush=True),
                       waiting_for=lambda: _waiting_for(queue))
    return 0 if ok else 1


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    pid = lock_holder(settings.daemon.pid_file)
    if pid:
        print(f"running (pid {pid})")
        return 0
    print("not running")
    return 3


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    problem = _cannot_start(settings)
    if problem:
        return _fail(problem)
    return daemon_main(settings, Readiness(None), foreground=True)


def cmd_restart(args: argparse.Namespace, settings: Settings) -> int:
    args.timeout = None
    if cmd_stop(args, settings) != 0:
        return 1
    return cmd_start(args, settings)


def cmd_reload(args: argparse.Namespace, settings: Settings) -> int:
    pid = lock_holder(settings.daemon.pid_file)
    if not pid:
        return _fail("not running", 3)
    os.kill(pid, signal.SIGHUP)
    print(f"sent SIGHUP to pid {pid} (reopens the log file)")
    return 0


def cmd_enqueue(args: argparse.Namespace, settings: Settings) -> int:
    from clipper.jobs.fetch import check_source_policy
    from clipper.jobs.spec import parse_message

    raw = sys.stdin.buffer.read() if args.message == "-" else args.message.encode()
    try:
        spec = parse_message(raw, settings.media)
        check_source_policy(spec.source, settings.fetch)  # what the daemon would refuse anyway
    except PermanentError as exc:
        reason = str(exc)
        return _fail(reason if reason.startswith("invalid message") else f"invalid message: {reason}", 2)
    try:
        _queue(settings).push(raw.strip())
    except redis.RedisError as exc:
        return _fail(_unreachable(settings, exc))
    print(spec.id)
    return 0


def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    try:
        stats = _queue(settings).stats()
    except redis.RedisError as exc:
        return _fail(_unreachable(settings, exc))
    if args.json:
        print(json.dumps(stats))
        return 0
    print(f"queue       {stats['queue']}")
    for key in ("pending", "processing", "retry", "dead", "replies"):  # replies: recorded, not yet delivered
        print(f"{key:<11} {stats[key]}")
    print(f"consumers   {len(stats['consumers'])} live")
    for c in stats["consumers"]:
        jobs = ", ".join(c.get("jobs", [])) or "-"
        print(f"  {c['consumer']}  pid {c.get('pid')}  {c.get('in_flight', 0)}/{c.get('workers')} busy  jobs: {jobs}")
    return 0


def cmd_dead(args: argparse.Namespace, settings: Settings) -> int:
    try:
        q = _queue(settings)
        if args.action == "list":
            for entry in q.dead_entries(args.limit):
                if args.json:
                    print(entry.decode("utf-8", "replace"))
                    continue
                d = json.loads(entry)
                err = d.get("error") or {}
                print(f"{d.get('id')}  attempts={d.get('attempts')}  {err.get('kind')}: {err.get('message')}")
            return 0
        if args.action == "retry":
            print(f"requeued {q.dead_retry(args.ids or None)} dead letter(s)")
            return 0
        print(f"purged {q.dead_purge()} dead letter(s)")
        return 0
    except redis.RedisError as exc:
        return _fail(_unreachable(settings, exc))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipper", description="Clip videos from a Redis queue into object storage.")
    p.add_argument("--version", action="version", version=f"clipper {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, func: Any, daemon_options: bool = False) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("env", metavar="ENV", help="settings/ENV.toml to use (dev, local, prod, ...)")
        if daemon_options:
            sp.add_argument("--workers", type=int, help="worker threads (0: number of CPUs); wins over settings")
            sp.add_argument("--ffmpeg-threads", type=int, help="-threads for each ffmpeg (0: ffmpeg's choice)")
            sp.add_argument("--stop-timeout", type=float, help="grace in seconds for in-flight jobs after SIGTERM")
        sp.set_defaults(func=func)
        return sp

    start = command("start", "detach a daemon; exit 0 with its pid once it is ready", cmd_start, True)
    start.add_argument("--wait", type=float, default=30.0, help="seconds to wait for readiness")
    command("stop", "SIGTERM the daemon and wait for it to exit", cmd_stop).add_argument(
        "--timeout", type=float, help="seconds to wait (default: daemon.stop_timeout + 15)")
    command("status", "exit 0 and print the pid when running, 3 when not", cmd_status)
    command("run", "run the daemon in the foreground (Ctrl-C drains)", cmd_run, True)
    restart = command("restart", "stop, then start", cmd_restart, True)
    restart.add_argument("--wait", type=float, default=30.0)
    command("reload", "SIGHUP: reopen the log file", cmd_reload)
    command("enqueue", "validate a message and LPUSH it; prints the job id", cmd_enqueue).add_argument(
        "message", metavar="MESSAGE", help="JSON text or a URL; - reads standard input")
    command("stats", "queue depths, live consumers, in-flight jobs", cmd_stats).add_argument(
        "--json", action="store_true")
    dead = command("dead", "inspect and requeue dead letters", cmd_dead)
    dead.add_argument("action", choices=["list", "retry", "purge"])
    dead.add_argument("ids", nargs="*", metavar="ID", help="with retry: only these job ids")
    dead.add_argument("--limit", type=int, default=100)
    dead.add_argument("--json", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.env, overrides=_overrides(args))
    except SettingsError as exc:
        return _fail(str(exc))
    return int(args.func(args, settings) or 0)


if __name__ == "__main__":
    sys.exit(main())
