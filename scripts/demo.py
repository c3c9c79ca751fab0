"""`make demo`: sample media, one job with several outputs (all three modes, several formats,
a resize, thumbnails), the daemon on the embedded defaults (settings/dev.toml) until the job is
done, then where each output is with its ffprobe summary."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import redis

from clipper.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
CLIPPER = [sys.executable, "-m", "clipper"]


def sample_media(path: Path) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"generating {path} (60 s, 1280x720, H.264 GOP 2 s + AAC)")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "60",
                    "-c:v", "libx264", "-preset", "veryfast", "-g", "60", "-keyint_min", "60", "-sc_threshold", "0",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", "-movflags", "+faststart", str(path)], check=True)


def summary(path: Path) -> str:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                          "format=duration,size:stream=codec_name,width,height", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    streams = ", ".join(s["codec_name"] + (f" {s['width']}x{s['height']}" if s.get("width") else "")
                        for s in data.get("streams", []))
    fmt = data.get("format", {})
    return f"{float(fmt.get('duration', 0)):.2f} s, {int(fmt.get('size', 0)) / 1024:.0f} KiB, {streams}"


def main() -> int:
    settings = load_settings("dev", cwd=ROOT)
    media = ROOT / "var" / "media" / "demo.mp4"
    sample_media(media)
    job = {
        "id": f"demo-{int(time.time())}",
        "source": media.as_uri(),
        "clips": [
            {"name": "copy-10s", "start": 5, "end": 15, "mode": "copy"},
            {"name": "accurate-webm-360p", "start": 12.5, "duration": 4, "mode": "accurate", "format": "webm",
             "height": 360},
            {"name": "smart-20s", "start": 7.3, "end": 27.7, "mode": "smart"},
            {"name": "loop", "start": 30, "duration": 3, "format": "gif", "width": 320},
            {"name": "audio", "start": 0, "duration": 10, "format": "mp3"},
        ],
        "thumbnails": [
            {"name": "poster", "at": 3, "width": 256, "height": 256, "fit": "cover"},
            {"name": "wide", "at": 20, "width": 640, "fit": "contain", "format": "webp"},
        ],
    }
    started_here = subprocess.run([*CLIPPER, "status", "dev"], cwd=ROOT, capture_output=True).returncode != 0
    if started_here:
        subprocess.run([*CLIPPER, "start", "dev"], cwd=ROOT, check=True)
    try:
        subprocess.run([*CLIPPER, "enqueue", "dev", json.dumps(job)], cwd=ROOT, check=True)
        r = redis.Redis.from_url(settings.redis.url)
        key = f"{settings.redis.queue}:job:{job['id']}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            status = (r.hget(key, "status") or b"").decode()
            if status in ("done", "failed"):
                break
            time.sleep(0.2)
        result = json.loads(r.hget(key, "result") or b"{}")
    finally:
        if started_here:
            subprocess.run([*CLIPPER, "stop", "dev"], cwd=ROOT, check=False)
    print(f"\njob {job['id']}: {result.get('status')}  timings {result.get('timings')}")
    if result.get("status") != "done":
        print(f"error: {result.get('error')}")
        return 1
    for out in result["outputs"]:
        path = settings.output.dir / out["key"]
        mode = f" mode={out['mode']}" if out.get("mode") else ""
        print(f"  {out['name']:<20} {path}\n  {'':<20} {summary(path)}{mode}")
    print(f"  manifest             {settings.output.dir / result['manifest']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
