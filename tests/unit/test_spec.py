import json

import pytest

from clipper.errors import PermanentError
from clipper.jobs.spec import job_id_for_raw, parse_message, parse_time, redact_url
from clipper.settings import MediaSettings

MEDIA = MediaSettings()
Q = "clipper:jobs"


def msg(**fields) -> bytes:
    base = {"source": "https://cdn.example.com/v.mp4", "clips": [{"name": "a", "start": 5, "end": 15}]}
    base.update(fields)
    return json.dumps(base).encode()


def test_design_example_parses() -> None:
    raw = json.dumps({
        "id": "job-42", "source": "https://cdn.example.com/v/123.mp4",
        "clips": [{"name": "intro", "start": 5, "end": 15},
                  {"name": "tail", "start": "00:09:50", "duration": 10, "mode": "accurate", "format": "webm", "height": 360}],
        "thumbnails": [{"name": "poster", "at": 3, "width": 256, "height": 256, "fit": "cover"}],
        "output_prefix": "user-7/upload-99", "reply_to": "app:results"})
    spec = parse_message(raw, MEDIA, Q)
    assert spec.id == "job-42"
    assert [(c.name, c.start, c.end, c.mode, c.format) for c in spec.clips] == [
        ("intro", 5.0, 15.0, "copy", "mp4"), ("tail", 590.0, 600.0, "accurate", "webm")]
    assert spec.clips[1].height == 360
    assert spec.thumbnails[0].at == 3.0
    assert spec.output_dir_key("clips") == "clips/user-7/upload-99"
    assert spec.reply_to == "app:results"


def test_bare_url_and_json_string_get_default_outputs() -> None:
    for raw in (b"https://cdn.example.com/v.mp4", b'"https://cdn.example.com/v.mp4"'):
        spec = parse_message(raw, MEDIA, Q)
        assert spec.source == "https://cdn.example.com/v.mp4"
        assert [c.name for c in spec.clips] == ["clip"]
        assert [t.name for t in spec.thumbnails] == ["poster"]
    assert job_id_for_raw(b"https://cdn.example.com/v.mp4") == job_id_for_raw(b'"https://cdn.example.com/v.mp4"')


def test_derived_id_is_stable_and_content_based() -> None:
    a = job_id_for_raw(b'{"source": "https://x/v.mp4", "clips": [{"name": "a", "start": 1, "end": 2}]}')
    b = job_id_for_raw(b'{"clips":[{"end":2,"name":"a","start":1}],"source":"https://x/v.mp4"}')
    c = job_id_for_raw(b'{"source": "https://x/w.mp4", "clips": [{"name": "a", "start": 1, "end": 2}]}')
    assert a == b != c
    assert parse_message(b'{"clips":[{"end":2,"name":"a","start":1}],"source":"https://x/v.mp4"}', MEDIA, Q).id == a


def test_output_key_defaults_to_id() -> None:
    assert parse_message(msg(id="j1"), MEDIA, Q).output_dir_key("clips/") == "clips/j1"
    assert parse_message(msg(id="j1"), MEDIA, Q).output_dir_key("") == "j1"


@pytest.mark.parametrize("value,seconds", [(5, 5.0), (2.5, 2.5), ("00:09:50", 590.0), ("01:00:00.250", 3600.25), ("0:0:1", 1.0)])
def test_parse_time(value, seconds) -> None:
    assert parse_time(value, "t") == seconds


@pytest.mark.parametrize("value", [-1, "5", "1:2", "aa:bb:cc", True, None, [], 1e308, float("inf"), "00:61:00"])
def test_parse_time_rejects(value) -> None:
    with pytest.raises(ValueError):
        parse_time(value, "t")


@pytest.mark.parametrize("raw,reason", [
    (b"{", "not valid JSON"),
    (b"[1, 2]", "JSON object or a URL"),
    (b"42", "JSON object or a URL"),
    (b"", "empty"),
    (b"\xff\xfe", "not UTF-8"),
    (b'{"source": "https://x/v.mp4", "clips": [{"name": "a", "start": NaN, "end": 2}]}', "NaN"),
    (msg(source="file:///etc/passwd", id=None).replace(b'"id": null, ', b""), None),
    (msg(source="gopher://x/1"), "scheme 'gopher'"),
    (msg(source="concat:a.mp4|b.mp4"), "scheme 'concat'"),
    (msg(source="ftp://x/v.mp4"), "scheme 'ftp'"),
    (msg(source="https:///nohost"), "no host"),
    (msg(id="../etc"), "id"),
    (msg(id="a" * 129), "id"),
    (msg(clips=[{"name": "../x", "start": 1, "end": 2}]), "clip name"),
    (msg(clips=[{"name": ".hidden", "start": 1, "end": 2}]), "clip name"),
    (msg(clips=[{"name": "a", "start": 1, "end": 2}, {"name": "a", "start": 3, "end": 4}]), "duplicate output names: a"),
    (msg(clips=[{"name": "a", "start": 5, "end": 2}]), "must be after start"),
    (msg(clips=[{"name": "a", "start": 5}]), "exactly one of end and duration"),
    (msg(clips=[{"name": "a", "start": 5, "end": 6, "duration": 1}]), "exactly one of end and duration"),
    (msg(clips=[{"name": "a", "start": -1, "end": 2}]), "out of range"),
    (msg(clips=[{"name": "a", "start": 1, "end": 10**30}]), "out of range"),
    (msg(clips=[{"name": "a", "start": True, "end": 2}]), "start"),
    (msg(clips=[{"name": "a", "start": 1, "end": 2, "mode": "copy", "format": "gif"}]), "mode 'copy' cannot produce"),
    (msg(clips=[{"name": "a", "start": 1, "end": 2, "mode": "copy", "width": 320}]), "resize"),
    (msg(clips=[{"name": "a", "start": 1, "end": 2, "mode": "turbo"}]), "mode"),
    (msg(clips=[{"name": "a", "start": 1, "end": 2, "format": "avi"}]), "format"),
    (msg(clips=[{"name": "a", "start": 1, "end": 2, "width": 99999}]), "width"),
    (msg(clips=[{"name": "a", "start": 0, "end": 60, "format": "gif"}]), "gif_max_duration"),
    (msg(clips=[]), "asks for nothing"),
    (msg(clips="a"), "clips"),
    (msg(output_prefix="/abs"), "output_prefix"),
    (msg(output_prefix="a/../../b"), "output_prefix"),
    (msg(reply_to="has space"), "reply_to"),
    (msg(id="job\n"), "id"),
    (msg(clips=[{"name": "a\n", "start": 1, "end": 2}]), "clip name"),
    (msg(output_prefix="colA\n"), "output_prefix"),
    (msg(reply_to="app:results\n"), "reply_to"),
    (msg(reply_to=Q), "names a key of the queue itself"),
    (msg(reply_to=f"{Q}:job:other"), "names a key of the queue itself"),
    (msg(unknown=1), "unknown: unknown field"),
    (msg(thumbnails=[{"name": "t", "at": 1, "fit": "stretch"}]), "fit"),
    (msg(clips=[{"name": "manifest", "start": 1, "end": 2}]), "reserved"),
])
def test_invalid_messages_are_permanent_with_a_reason(raw: bytes, reason: str | None) -> None:
    if reason is None:  # file:// is refused later, by fetch (it depends on fetch.allow_file_roots)
        assert parse_message(raw, MEDIA, Q).source == "file:///etc/passwd"
        return
    with pytest.raises(PermanentError, match=reason if reason != "NaN" else "NaN is not allowed|not valid JSON"):
        parse_message(raw, MEDIA, Q)


def test_too_many_outputs() -> None:
    clips = [{"name": f"c{i}", "start": 1, "end": 2} for i in range(MEDIA.max_clips + 1)]
    with pytest.raises(PermanentError, match="max_clips"):
        parse_message(msg(clips=clips), MEDIA, Q)


def test_huge_message() -> None:
    with pytest.raises(PermanentError, match="limit"):
        parse_message(b'"' + b"a" * 300_000 + b'"', MEDIA, Q)


def test_invalid_raw_still_gets_a_stable_id() -> None:
    assert job_id_for_raw(b"{not json") == job_id_for_raw(b"{not json")
    assert job_id_for_raw(b"{not json").startswith("x-")
    assert job_id_for_raw(msg(id="../x")).startswith("j-")  # invalid explicit ids are never used as keys


def test_format_implies_reencode_when_mode_not_given() -> None:
    spec = parse_message(msg(clips=[{"name": "a", "start": 1, "end": 2, "format": "webm"}]), MEDIA, Q)
    assert spec.clips[0].mode == "accurate"


def test_redact_url() -> None:
    assert redact_url("https://user:pw@host:8443/a/b.mp4?X-Amz-Signature=s") == "https://host:8443/a/b.mp4?…"
    assert redact_url("https://u:p@w@[::1]:80/x?q") == "https://[::1]:80/x?…"


def test_deeply_nested_json_is_an_invalid_message_not_a_crash() -> None:
    from clipper.errors import PermanentError
    from clipper.jobs.spec import reply_to_for_raw
    from clipper.settings import MediaSettings

    raw = b"[" * 100_000 + b"]" * 100_000
    assert job_id_for_raw(raw).startswith("x-")
    assert reply_to_for_raw(raw, Q) is None
    with pytest.raises(PermanentError, match="nested too deeply"):
        parse_message(raw, MediaSettings(), Q)
