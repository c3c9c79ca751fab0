import random

from clipper.keys import Keys, default_consumer_id
from clipper.policy import backoff_delay


def test_backoff_grows_exponentially_within_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (10, 300.0)]:
        for _ in range(50):
            d = backoff_delay(attempt, 2.0, 300.0, rng)
            assert ceiling / 2 <= d <= ceiling


def test_keys_derive_from_queue_and_keep_hash_tag() -> None:
    k = Keys("{clipper}:jobs")
    assert k.processing("h-1") == "{clipper}:jobs:processing:h-1"
    assert k.heartbeat("h-1") == "{clipper}:jobs:consumer:h-1"
    assert (k.retry, k.dead, k.consumers, k.events) == (
        "{clipper}:jobs:retry", "{clipper}:jobs:dead", "{clipper}:jobs:consumers", "{clipper}:jobs:events")
    assert k.job("j1") == "{clipper}:jobs:job:j1"


def test_consumer_id_is_stable_per_pid_file() -> None:
    assert default_consumer_id("/var/run/a.pid") == default_consumer_id("/var/run/a.pid")
    assert default_consumer_id("/var/run/a.pid") != default_consumer_id("/var/run/b.pid")


def test_redis_trouble_is_waited_out_while_key_errors_are_the_items() -> None:
    import redis

    from clipper.connections import redis_trouble

    for exc in (redis.ConnectionError("refused"), redis.TimeoutError(), redis.exceptions.OutOfMemoryError("OOM"),
                redis.ReadOnlyError("READONLY"), redis.ResponseError("BUSY Redis is busy running a script"),
                redis.ResponseError("LOADING Redis is loading the dataset in memory")):
        assert redis_trouble(exc), exc
    for exc in (redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
                redis.exceptions.NoPermissionError("NOPERM")):
        assert not redis_trouble(exc), exc


def test_backoff_never_overflows_however_many_attempts() -> None:
    from clipper.policy import backoff_delay

    assert 150 <= backoff_delay(10_000, 2.0, 300.0) <= 300
