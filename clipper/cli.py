"""The `clipper` command: start | stop | status | run | restart | reload | enqueue | stats | dead |
check | job.

Exit codes: 0 ok; 1 failure (with a one-line reason on stderr); 2 invalid message or usage;
3 `status` when not running (LSB). `check`: 0 healthy, 1 unhealthy with the reason.
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
from clipper.connections import connect_redis, unreachable, wait_policy
from clipper.daemon import Readiness, live, lock_holder, start_detached, stop_and_wait
from clipper.errors import SettingsError
from clipper.keys import default_consumer_id
from clipper.queue import ReliableQueue
from clipper.settings import Settings, load_settings
from clipper.sources.session import SourceCache


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
    for what, path in (("daemon.work_dir", settings.daemon.work_dir), ("cache.dir", settings.cache.dir)) + (
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
    _warn_about_output(settings)
    return 0


def _warn_about_output(settings: Settings) -> None:
    """The daemon logs it too; a terminal is where whoever just started it looks."""
    from clipper import health
    from clipper.jobs.upload import make_uploader

    problem = health.output_problem(make_uploader(settings.output, quick=True))
    if problem:
        print(f"clipper: warning: {problem} (jobs will wait in the retry queue until it takes writes)", file=sys.stderr)


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
    from clipper.client import Client, InvalidMessage

    raw = sys.stdin.buffer.read() if args.message == "-" else args.message.encode()
    client = Client.from_settings(settings)
    try:
        print(client.submit(raw))
    except InvalidMessage as exc:
        return _fail(str(exc), 2)
    except redis.RedisError as exc:
        return _fail(_unreachable(settings, exc))
    return 0


def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    from clipper import views

    queue = _queue(settings)
    if args.watch:
        def read() -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
            stats = queue.stats()
            return stats, {j: queue.job_record(j) for c in stats["consumers"] for j in c.get("jobs", [])}
        try:
            views.watch(read, sys.stdout, interval=args.interval)
        except KeyboardInterrupt:
            pass
        return 0
    try:
        stats = queue.stats()
    except redis.RedisError as exc:
        return _fail(_unreachable(settings, exc))
    stats["cache"] = SourceCache(settings).summary()
    print(json.dumps(stats) if args.json else "\n".join(views.stats_lines(stats)))
    return 0


def cmd_job(args: argparse.Namespace, settings: Settings) -> int:
    from clipper import views

    try:
        record = _queue(settings).job_record(args.id)
    except redis.RedisError as exc:
        return _fail(_unreachable(settings, exc))
    if not record:
        return _fail(f"no record of job {args.id!r} (never claimed, or expired after results.ttl)")
    print(json.dumps({"id": args.id, **views.job_json(record)}) if args.json else "\n".join(views.job_lines(args.id, record)))
    return 0


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from clipper import health
    from clipper.jobs.upload import make_uploader

    queue = _queue(settings)
    problem = health.redis_problem(queue.redis, settings.redis.url)
    beat = None
    if problem is None:
        try:
            beat = queue.heartbeat_of()
        except redis.RedisError as exc:
            problem = _unreachable(settings, exc)
    if problem is None:
        problem = health.daemon_problem(beat, consumer=queue.consumer, lock_pid=lock_holder(settings.daemon.pid_file),
                                        heartbeat_ttl=settings.redis.heartbeat_ttl,
                                        stuck_after=settings.media.stage_timeout)
    if problem is None:
        problem = health.output_problem(make_uploader(settings.output, quick=True))
    if problem is not None:
        return _fail(f"unhealthy: {problem}", health.EXIT_UNHEALTHY)
    assert beat is not None
    print(f"healthy: pid {beat.get('pid')}, {beat.get('in_flight', 0)}/{beat.get('workers')} busy, output writable")
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
        if args.action == "show":
            return _show_dead(q, args.ids)
        print(f"purged {q.dead_purge()} dead letter(s)")
        return 0
    except redis.RedisError as exc:
        return _fail(_unreachable(settings, exc))


def _show_dead(q: ReliableQueue, ids: list[str]) -> int:
    """One dead letter (the newest of the job), its message decoded when it is JSON."""
    if len(ids) != 1:
        return _fail("dead show takes exactly one job id", 2)
    entry = q.dead_entry(ids[0])
    if entry is None:
        return _fail(f"no dead letter of job {ids[0]!r} (retried, purged, or dropped by dead.max_entries/max_age)")
    letter = json.loads(entry)
    try:
        letter["message"] = json.loads(letter["raw"])
    except (ValueError, TypeError, KeyError, RecursionError):
        pass
    print(json.dumps(letter, indent=2, ensure_ascii=False))
    return 0


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    from clipper.client import Client

    client = Client.from_settings(settings)
    try:
        outcomes = {job_id: client.cancel(job_id) for job_id in args.ids}
    except redis.RedisError as exc:
        return _fail(_unreachable(settings, exc))
    for job_id, outcome in outcomes.items():
        print(f"{job_id}  {CANCEL_SAYS[outcome]}")
    return 1 if "unknown" in outcomes.values() else 0


CANCEL_SAYS = {
    "cancelled": "cancelled",
    "cancelling": "cancelling (a daemon is running it: stopped within a second)",
    "done": "already done: left as it is",
    "failed": "already failed: left as it is",
    "unknown": "unknown job (never pushed, or its record expired)",
}


def cmd_schema(args: argparse.Namespace) -> int:
    from clipper.schemas import schema_text

    sys.stdout.write(schema_text(args.which))
    return 0


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
    stats = command("stats", "queue depths, live consumers, in-flight jobs", cmd_stats)
    stats.add_argument("--json", action="store_true")
    stats.add_argument("--watch", action="store_true", help="a live view that redraws in place (Ctrl-C quits)")
    stats.add_argument("--interval", type=float, default=1.0, help="seconds between redraws with --watch")
    job = command("job", "one job's record: status, attempts, progress, result or error", cmd_job)
    job.add_argument("id", metavar="ID")
    job.add_argument("--json", action="store_true")
    command("check", "health: exit 0 when Redis answers, this host's daemon is alive and not stuck, and the "
            "output takes a write; else 1 and the reason", cmd_check)
    dead = command("dead", "inspect and requeue dead letters", cmd_dead)
    dead.add_argument("action", choices=["list", "show", "retry", "purge"])
    dead.add_argument("ids", nargs="*", metavar="ID", help="show: the job id; retry: only these job ids")
    dead.add_argument("--limit", type=int, default=100)
    dead.add_argument("--json", action="store_true")
    command("cancel", "cancel queued, retrying or running jobs; a finished job is left as it is",
            cmd_cancel).add_argument("ids", nargs="+", metavar="ID")
    schema = sub.add_parser("schema", help="print the JSON Schema (draft 2020-12) of a message or a result",
                            description="print the JSON Schema (draft 2020-12) of a message or a result")
    schema.add_argument("which", choices=["message", "result"])
    schema.set_defaults(func=cmd_schema, needs_settings=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not getattr(args, "needs_settings", True):
        return int(args.func(args) or 0)
    try:
        settings = load_settings(args.env, overrides=_overrides(args))
    except SettingsError as exc:
        return _fail(str(exc))
    return int(args.func(args, settings) or 0)


if __name__ == "__main__":
    sys.exit(main())
