"""What the inspection commands print: `clipper stats` (once, or `--watch`: a live view that
redraws in place), and `clipper job` (one job's record, for humans or as JSON).

Formatting is pure (records and stats in, lines out); the live view is a small loop that
reads, formats and redraws with two ANSI sequences (cursor home, clear to the end), so any
terminal, `watch`-less container shell or pseudo-terminal shows it without a curses library.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from clipper.sources.store import COUNTERS

HOME_AND_CLEAR = "\x1b[H\x1b[J"
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"
DEPTHS = ("pending", "processing", "retry", "dead")
_NUMBERS = ("attempts", "percent", "eta", "created_at", "started_at", "updated_at", "finished_at", "due_at")


def progress_bar(percent: float, width: int = 30) -> str:
    filled = max(0, min(width, round(width * percent / 100)))
    return "[" + "#" * filled + "." * (width - filled) + f"] {percent:5.1f}%"


def _when(ts: Any) -> str:
    try:
        return datetime.fromtimestamp(float(ts), tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError):
        return "-"


def _eta(seconds: Any) -> str:
    try:
        s = int(float(seconds))
    except (TypeError, ValueError):
        return ""
    return f"  eta {s // 60}m{s % 60:02d}s" if s >= 60 else f"  eta {s}s"


def job_json(record: dict[str, str]) -> dict[str, Any]:
    """A job record with its numbers as numbers and its result as JSON (`clipper job --json`)."""
    out: dict[str, Any] = dict(record)
    for key in _NUMBERS:
        if key in out:
            try:
                number = float(out[key])
                out[key] = int(number) if number.is_integer() and key == "attempts" else number
            except ValueError:
                pass
    if "result" in out:
        try:
            out["result"] = json.loads(out["result"])
        except ValueError:
            pass
    return out


def job_lines(job_id: str, record: dict[str, str]) -> list[str]:
    """One job's record for humans: status, attempts, progress, result or error."""
    lines = [f"job         {job_id}", f"status      {record.get('status', '-')}",
             f"attempts    {record.get('attempts', '0')}"]
    stage = record.get("progress", "-")
    if record.get("status") == "running" and "percent" in record:
        lines.append(f"progress    {stage}  {progress_bar(float(record['percent']))}{_eta(record.get('eta'))}")
    else:
        lines.append(f"progress    {stage}")
    for key, label in (("created_at", "created"), ("started_at", "started"), ("updated_at", "updated"),
                       ("finished_at", "finished"), ("due_at", "retry due")):
        if key in record:
            lines.append(f"{label:<11} {_when(record[key])}")
    if record.get("last_error") and record.get("status") in ("retrying", "queued", "running"):
        lines.append(f"last error  {record['last_error']}")
    result = job_json(record).get("result")
    if isinstance(result, dict):
        error = result.get("error")
        if error:
            lines.append(f"error       {error.get('kind')}: {error.get('message')}")
        for o in result.get("outputs") or []:
            lines.append(f"output      {o.get('name')}  {o.get('key')}  {o.get('bytes')} bytes")
        if result.get("timings"):
            lines.append("timings     " + "  ".join(f"{k}={v}" for k, v in result["timings"].items()))
    return lines


def stats_lines(stats: dict[str, Any], jobs: dict[str, dict[str, str]] | None = None, width: int = 80) -> list[str]:
    """Queue depths, throughput over the last minute, each live consumer with its counters
    since start, and (with `jobs`: their records) one line per running job with a bar."""
    lines = [f"queue       {stats['queue']}"] + [f"{key:<11} {stats[key]}" + _depth_note(key, stats) for key in DEPTHS]
    if "replies" in stats:  # recorded with their outcome, not yet delivered to their reply_to
        lines.append(f"replies     {stats['replies']}")
    lines += [f"warning     {finding}" for finding in stats.get("foreign", [])]
    consumers = stats["consumers"]
    minute = {k: sum((c.get("last_minute") or {}).get(k, 0) for c in consumers) for k in ("done", "failed")}
    lines.append(f"last minute {minute['done']} done, {minute['failed']} failed")
    lines.append(f"consumers   {len(consumers)} live")
    for c in consumers:
        counts = c.get("counters") or {}
        lines.append(f"  {c['consumer']}  pid {c.get('pid')}  {c.get('in_flight', 0)}/{c.get('workers')} busy  "
                     f"done {counts.get('done', 0)}  failed {counts.get('failed', 0)}  retried {counts.get('retried', 0)}"
                     + ("" if jobs is not None else f"  jobs: {', '.join(c.get('jobs', [])) or '-'}"))
        for job_id in c.get("jobs", []) if jobs is not None else []:
            lines.append("    " + _running_job(job_id, jobs.get(job_id, {}), width - 4))
    if "cache" in stats:
        lines += _cache_lines(stats["cache"])
    return lines


def _depth_note(key: str, stats: dict[str, Any]) -> str:
    """The high lane inside `pending`, and what dead-letter retention dropped so far."""
    if key == "pending" and "pending_high" in stats:
        return f" ({stats['pending_high']} high)"
    if key == "dead" and "dead_dropped" in stats:
        return f" ({stats['dead_dropped']} dropped by retention so far)"
    return ""


def _cache_lines(cache: dict[str, Any]) -> list[str]:
    """The shared source cache of this host (clipper.sources): sizes against budgets, counters."""
    return [f"cache       {cache['dir']}: {cache['entries']} sources, {cache['bytes']} of {cache['budget']} bytes; "
            f"{cache['output_entries']} outputs, {cache['output_bytes']} of {cache['output_budget']} bytes",
            "            " + ", ".join(f"{k.replace('_', ' ')} {cache[k]}" for k in COUNTERS)]


def _running_job(job_id: str, record: dict[str, str], width: int) -> str:
    stage = record.get("progress", "-")
    percent = float(record.get("percent") or 0.0)
    name = job_id if len(job_id) <= 24 else job_id[:23] + "…"
    bar_width = max(10, min(40, width - len(name) - len(stage) - 30))
    return f"{name:<24} {stage:<10} {progress_bar(percent, bar_width)}{_eta(record.get('eta'))}"


def watch(read: Callable[[], tuple[dict[str, Any], dict[str, dict[str, str]]]], out: TextIO, *,
          interval: float = 1.0, frames: int | None = None) -> None:
    """Redraw the stats every `interval` seconds until interrupted (or `frames` drawn)."""
    drawn = 0
    out.write(HIDE_CURSOR)
    try:
        while frames is None or drawn < frames:
            width = shutil.get_terminal_size((100, 24)).columns
            try:
                stats, jobs = read()
                body = stats_lines(stats, jobs, width)
            except Exception as exc:  # noqa: BLE001 - the view goes on while Redis is away
                body = [f"cannot read the queue: {exc}"]
            header = f"clipper stats  {time.strftime('%H:%M:%S')}  (every {interval:g} s, Ctrl-C quits)"
            out.write(HOME_AND_CLEAR + "\n".join([header, ""] + body) + "\n")
            out.flush()
            drawn += 1
            if frames is None or drawn < frames:
                time.sleep(interval)
    finally:
        out.write(SHOW_CURSOR)
        out.flush()
