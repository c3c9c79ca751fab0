from clipper.logs import scrub


def test_scrub_removes_credentials_and_signed_queries() -> None:
    assert scrub("GET https://AKIA:secret@host/a.mp4?X-Amz-Signature=abc failed") == "GET https://host/a.mp4?… failed"
    assert scrub("redis://:hunter2@10.0.0.1:6379/0") == "redis://10.0.0.1:6379/0"
    assert scrub("plain text") == "plain text"
