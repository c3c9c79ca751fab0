"""The JSON Schemas agree with the parser: what the schema accepts the parser accepts (a property
test generating messages from the schema), what the parser refuses the schema refuses or lists
among the checks it cannot express. The dead letters of the hostile-input test go through
`schemacheck.explain_rejection` too (tests/integration/test_hostile.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis_jsonschema import from_schema
from jsonschema import Draft202012Validator
from schemacheck import checks_beyond_schema

from clipper.jobs.spec import MAX_SECONDS, parse_message, parse_time
from clipper.schemas import SCHEMA_NAMES, load_schema, schema_error
from clipper.settings import MediaSettings

README = Path(__file__).resolve().parents[2] / "README.md"
# The settings-dependent limits opened as wide as the schema's own bounds, so that only what the
# schema cannot express (cross-field rules) can make the parser refuse a generated message.
WIDE = MediaSettings(max_clips=10**6, max_clip_duration=2 * MAX_SECONDS, max_dimension=16384, gif_max_duration=MAX_SECONDS)

DESIGN_EXAMPLE = {
    "id": "job-42", "source": "https://cdn.example.com/v/123.mp4",
    "clips": [{"name": "intro", "start": 5, "end": 15},
              {"name": "tail", "start": "00:09:50", "duration": 10, "mode": "accurate", "format": "webm", "height": 360}],
    "thumbnails": [{"name": "poster", "at": 3, "width": 256, "height": 256, "fit": "cover"}],
    "output_prefix": "user-7/upload-99", "reply_to": "app:results", "priority": "high",
}


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schemas_are_valid_draft_2020_12(name: str) -> None:
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_checks_beyond_the_schema_are_in_its_description_and_the_readme() -> None:
    description = load_schema("message")["description"]
    readme = README.read_text()
    for check in checks_beyond_schema():
        assert check["check"] in description
        assert check["check"] in readme, f"README.md does not list {check['check']!r}"


@pytest.mark.parametrize("message", [
    DESIGN_EXAMPLE,
    "https://cdn.example.com/v.mp4",
    {"source": "s3://bucket/key.mp4"},
    {"source": "file:///srv/media/a.mp4", "thumbnails": [{"name": "t", "at": "168:00:00", "quality": 100}]},
    {"source": "HTTPS://user:pw@cdn.example.com:8443/v.mp4?sig=x#t", "id": None, "clips": None,
     "thumbnails": [{"name": "t.jpg", "at": 0, "width": None, "format": "png", "fit": "contain"}]},
    {"source": "http://10.0.0.1/v", "clips": [{"name": "a", "start": "1:2:3.5", "end": 5000, "width": None,
                                               "mode": "copy", "format": "mkv", "height": None, "upscale": True},
                                              {"name": "b", "start": 0, "end": 1, "width": 640.0, "mode": None}]},
    {"source": "http://x/v", "output_prefix": "a/.b/...c/d=e", "clips": [{"name": "a", "start": 0, "duration": "0:0:0.5"}]},
])
def test_good_messages_pass_schema_and_parser(message: Any) -> None:
    assert schema_error("message", message) is None
    parse_message(json.dumps(message), WIDE, "clipper:jobs")


@pytest.mark.parametrize("message,where", [
    ({"source": "http://x/v", "clips": [{"name": "a", "start": 1, "end": 2, "width": "640"}]}, "width"),
    ({"source": "http://x/v", "clips": [{"name": "a", "start": 1, "end": 2, "upscale": "yes"}]}, "upscale"),
    ({"source": "http://x/v", "thumbnails": [{"name": "t", "at": 1, "quality": 85.5}]}, "quality"),
    ({"source": "http://x/v", "clips": [{"name": "a", "start": " 00:00:01", "end": 2}]}, "start"),
    ({"source": "http://x/v", "clips": [{"name": "a", "start": "٠:٠:١", "end": 2}]}, "start"),
    ({"source": "http://x/v", "clips": [{"name": "a", "start": "168:00:01", "end": 2}]}, "start"),
    ({"source": "http://x/v", "clips": [{"name": "a", "start": 1, "duration": 0}]}, "after start"),
    ({"source": "http://x/v", "priority": "urgent"}, "priority"),
    ({"source": "http://[zz]/v"}, "source"),
])
def test_schema_and_parser_refuse_the_same_messages(message: dict[str, Any], where: str) -> None:
    assert schema_error("message", message) is not None
    with pytest.raises(Exception, match=where):
        parse_message(json.dumps(message), WIDE, "clipper:jobs")


def _clips(message: Any) -> list[dict[str, Any]]:
    return (message.get("clips") or []) if isinstance(message, dict) else []


def _beyond_schema(message: Any) -> bool:
    """The cross-field checks listed in x-checks-beyond-schema: an end not after its start,
    names used twice."""
    if not isinstance(message, dict):
        return False
    names = [o["name"] for o in _clips(message) + (message.get("thumbnails") or [])]
    if len(names) != len(set(names)):
        return True
    for c in _clips(message):
        start = parse_time(c["start"], "start")
        end = parse_time(c["end"], "end") if c.get("end") is not None else start + parse_time(c["duration"], "duration")
        if end <= start:  # with a duration too: one below the float resolution of start
            return True
    return False


# derandomized and without a database: the same examples on every run and machine; no shrinking
# phase, which can take minutes on these nested objects (the failing example is printed as found)
@settings(max_examples=20, deadline=None, derandomize=True, database=None, phases=(Phase.explicit, Phase.generate),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(from_schema(load_schema("message")))
def test_every_message_the_schema_generates_is_accepted_by_the_parser(message: Any) -> None:
    assume(not _beyond_schema(message))
    spec = parse_message(json.dumps(message), WIDE, "clipper:jobs")
    if isinstance(message, dict) and message.get("priority"):
        assert spec.priority == message["priority"]


def test_result_schema_accepts_the_result_shapes() -> None:
    done = {"id": "j", "status": "done", "attempts": 1, "manifest": "clips/j/manifest.json",
            "outputs": [{"name": "a", "kind": "clip", "key": "clips/j/a.mp4", "bytes": 10, "sha256": "0" * 64,
                         "format": "mp4", "duration": 1.0, "width": 640, "height": 360, "mode": "copy"}],
            "timings": {"fetch": 0.1, "total": 0.2}, "error": None}
    assert schema_error("result", done) is None
    assert schema_error("result", {**done, "at": 1.5}) is None  # as published on Q:events
    cancelled = {"id": "j", "status": "cancelled", "attempts": 1, "outputs": [], "timings": {},
                 "error": {"kind": "cancelled", "message": "cancelled"}}
    assert schema_error("result", cancelled) is None
    assert schema_error("result", {**done, "error": {"kind": "permanent", "message": "x"}}) is not None
    assert schema_error("result", {**cancelled, "outputs": done["outputs"]}) is not None


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_clipper_schema_prints_the_shipped_schema(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    from clipper.cli import main

    assert main(["schema", name]) == 0
    assert json.loads(capsys.readouterr().out) == load_schema(name)
