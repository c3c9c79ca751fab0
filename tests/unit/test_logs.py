from clipper.logs import scrub


def test_scrub_removes_credentials_and_signed_queries() -> None:
    assert scrub("GET https://AKIA:secret@host/a.mp4?X-Amz-Signature=abc failed") == "GET https://host/a.mp4?… failed"
    assert scrub("redis://:hunter2@10.0.0.1:6379/0") == "redis://10.0.0.1:6379/0"
    assert scrub("plain text") == "plain text"


def test_scrub_takes_userinfo_to_the_last_at_sign_and_leaves_closing_parens() -> None:
    assert scrub("cannot reach Redis at redis://default:s3cr@tPart@127.0.0.1:7397/0: refused") == \
        "cannot reach Redis at redis://127.0.0.1:7397/0: refused"
    assert scrub("(see https://h/x.mp4?sig=1)") == "(see https://h/x.mp4?…)"
    assert scrub("redis://h:6379 failed: mail me@example.com") == "redis://h:6379 failed: mail me@example.com"


def test_a_failed_reopen_keeps_the_old_file(tmp_path) -> None:
    from clipper.logs import ReopenableFile

    path = tmp_path / "log" / "c.log"
    f = ReopenableFile(path)
    f.write("one\n")
    path.rename(tmp_path / "log" / "c.log.1")
    path.mkdir()  # logrotate gone wrong: the new log path cannot be opened as a file
    assert f.reopen() is False
    f.write("two\n")
    assert (tmp_path / "log" / "c.log.1").read_text() == "one\ntwo\n"
