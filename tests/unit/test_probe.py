"""Parsing ffprobe's JSON into MediaInfo (pure)."""

import re
from fractions import Fraction

import pytest

from clipper.errors import PermanentError
from clipper.jobs.probe import check_source_limits, media_info_from_json
from clipper.settings import MediaSettings


def probe_json(**video_extra) -> dict:
    return {
        "format": {"format_name": "mov,mp4", "duration": "11.0", "start_time": "1.5", "size": "1000"},
        "streams": [
            {"index": 0, "codec_type": "video", "codec_name": "h264", "width": 720, "height": 480,
             "avg_frame_rate": "30000/1001", "time_base": "1/30000", "sample_aspect_ratio": "32:27",
             "start_time": "1.5", "duration": "6.0", **video_extra},
            {"index": 1, "codec_type": "audio", "codec_name": "aac", "sample_rate": "48000", "channels": 2,
             "start_time": "1.5", "duration": "11.0"},
        ],
    }


def test_start_time_sar_and_where_the_video_ends() -> None:
    info = media_info_from_json(probe_json())
    assert info.start_time == 1.5
    assert info.video.sar == Fraction(32, 27)
    assert info.video.fps == Fraction(30000, 1001)
    assert info.video_end == 6.0  # in clip time: relative to the container's start
    assert info.duration == 11.0 and info.audio.duration == 11.0


def test_matroska_stream_length_comes_from_its_duration_tag() -> None:
    data = probe_json(duration=None, tags={"DURATION": "00:00:07.500000000"})
    info = media_info_from_json(data)
    assert info.video.duration == 6.0  # the tag is where the stream ends on the file's clock
    assert info.video_end == 6.0


def test_unknown_sar_and_missing_durations() -> None:
    info = media_info_from_json(probe_json(sample_aspect_ratio="0:1", duration=None))
    assert info.video.sar == Fraction(1)
    assert info.video_end is None


@pytest.mark.parametrize(("data", "refusal"), [
    (probe_json(width=8000, height=4000), "8000x4000 = 32000000 pixels, more than media.max_source_pixels = 16777216"),
    (probe_json(avg_frame_rate="1000/1"), "frame rate 1000 fps is more than media.max_source_fps = 240"),
    ({**probe_json(), "format": {"duration": "90000"}}, "duration 90000 s is more than media.max_source_duration"),
    ({**probe_json(), "streams": probe_json()["streams"] * 9}, "18 streams, more than media.max_source_streams = 16"),
])
def test_sources_beyond_the_limits_are_refused_naming_limit_and_value(data: dict, refusal: str) -> None:
    check_source_limits(media_info_from_json(probe_json()), MediaSettings())  # within every limit
    with pytest.raises(PermanentError, match=re.escape(refusal)):
        check_source_limits(media_info_from_json(data), MediaSettings())
