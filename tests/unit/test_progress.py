"""ffmpeg `-progress` parsing and a job's percent / time left (pure, with a fake clock)."""

from __future__ import annotations

from clipper.media.progress import THUMBNAIL_WEIGHT, FfmpegProgress, JobProgress, ProgressReport, parse_progress

# as ffmpeg 5.1 writes it (trimmed): N/A and a negative time first, then real reports, then end
FFMPEG_OUTPUT = """\
frame=1
out_time_us=N/A
out_time=N/A
speed=N/A
progress=continue
frame=3
out_time_us=-66667
speed=   0x
progress=continue
frame=88
bitrate=   0.9kbits/s
out_time_us=433398
out_time_ms=433398
out_time=00:00:00.433398
speed=0.423x
progress=continue
garbage line without an equals sign
out_time_us=3000000
progress=end
"""


def test_parse_progress_yields_one_report_per_block() -> None:
    reports = list(parse_progress(FFMPEG_OUTPUT.splitlines()))
    assert reports == [FfmpegProgress(0.0), FfmpegProgress(0.0), FfmpegProgress(0.433398), FfmpegProgress(3.0, end=True)]


def test_parse_progress_ignores_a_trailing_incomplete_block() -> None:
    assert list(parse_progress(["out_time_us=1000000", "progress=continue", "out_time_us=2000000"])) == [
        FfmpegProgress(1.0)]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_percent_is_weighted_by_media_seconds_and_never_goes_back() -> None:
    clock, seen = Clock(), []
    job = JobProgress([30.0, 10.0], seen.append, clock=clock, every=1.0)
    job.begin("clip", 30.0)
    for t, out in ((1, 6.0), (2, 15.0), (3, 3.0), (4, 30.0)):  # 3.0: a smart cut's second ffmpeg restarts at 0
        clock.now = 100 + t
        job.ffmpeg(FfmpegProgress(out))
    job.finish()
    job.begin("clip", 10.0)
    clock.now = 106
    job.ffmpeg(FfmpegProgress(10.0, end=True))
    job.finish()
    percents = [r.percent for r in seen]
    assert percents[0] == 0.0 and percents[-1] == 100.0
    assert percents == sorted(percents)
    assert 37.5 in percents  # 15 s of 40


def test_reports_are_throttled_but_first_and_last_always_go_out() -> None:
    clock, seen = Clock(), []
    job = JobProgress([100.0], seen.append, clock=clock, every=1.0)
    job.begin("clip", 100.0)
    for i in range(1, 20):  # ffmpeg reports twice a second for 9.5 s
        clock.now = 100 + i * 0.5
        job.ffmpeg(FfmpegProgress(i * 5.0))
    job.finish()
    assert len(seen) == 1 + 9 + 1  # begin, one per second (101..109), finish
    assert seen[-1] == ProgressReport("clip", 100.0, 0.0)


def test_eta_from_the_rate_so_far_and_none_before_one_percent() -> None:
    clock, seen = Clock(), []
    job = JobProgress([60.0], seen.append, clock=clock, every=0.0)
    job.begin("clip", 60.0)
    assert seen[-1].eta is None
    clock.now = 110.0  # 10 s for 15 of 60 media seconds: 30 s left
    job.ffmpeg(FfmpegProgress(15.0))
    assert seen[-1] == ProgressReport("clip", 25.0, 30.0)


def test_a_thumbnail_counts_as_one_second() -> None:
    seen: list[ProgressReport] = []
    job = JobProgress([3.0, THUMBNAIL_WEIGHT], seen.append, clock=Clock())
    job.begin("clip", 3.0)
    job.finish()
    job.begin("thumbnails", THUMBNAIL_WEIGHT)
    job.finish()
    assert [r.percent for r in seen] == [0.0, 75.0, 75.0, 100.0]
