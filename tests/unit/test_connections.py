"""The Redis topology URLs, the cluster hash-tag rule and the settings that refuse a queue
name whose keys would spread over cluster slots."""

from pathlib import Path

import pytest
from redis.cluster import key_slot

from clipper.connections import Topology, cluster_queue_problem, hash_tag, parse_topology
from clipper.errors import SettingsError
from clipper.settings import load_settings


def test_one_server_urls_are_not_topologies() -> None:
    assert parse_topology("redis://127.0.0.1:6379/0") is None
    assert parse_topology("rediss://u:p@h:6380/2") is None
    assert parse_topology("unix:///run/redis.sock") is None


def test_sentinel_url() -> None:
    t = parse_topology("redis+sentinel://app:s%40cret@10.0.0.1:26379,10.0.0.2,[::1]:26380/mymaster/3")
    assert t == Topology("sentinel", (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380)), False, "app",
                         "s@cret", "mymaster", 3)
    assert parse_topology("rediss+sentinel://h:1/m").tls


def test_cluster_url() -> None:
    t = parse_topology("redis+cluster://:pw@h1:7000,h2:7001/")
    assert t == Topology("cluster", (("h1", 7000), ("h2", 7001)), False, None, "pw")
    assert parse_topology("rediss+cluster://h1").nodes == (("h1", 6379),)


@pytest.mark.parametrize("url, message", [
    ("redis+sentinel://h:1", "master_name"),
    ("redis+sentinel://h:1/m/x", "database must be a number"),
    ("redis+sentinel:///m", "at least one host"),
    ("redis+cluster://h:1/2", "only database 0"),
    ("redis+cluster://h:port", "bad node"),
])
def test_bad_topology_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_topology(url)


@pytest.mark.parametrize("key, tag", [
    ("{clipper}:jobs", "clipper"), ("jobs:{a}:{b}", "a"), ("clipper:jobs", None), ("{}jobs", None),
    ("a{}{b}", None), ("a{b", None), ("{clipper:jobs}", "clipper:jobs"),
])
def test_hash_tag_follows_the_cluster_spec(key: str, tag: str | None) -> None:
    assert hash_tag(key) == tag


@pytest.mark.parametrize("queue", ["{clipper}:jobs", "{clipper:jobs}", "app:{q}"])
def test_a_tagged_queue_keeps_every_derived_key_in_its_slot(queue: str) -> None:
    assert cluster_queue_problem(queue) is None
    for suffix in ("", ":retry", ":dead", ":processing:host-1a2b3c4d", ":job:j-42", ":consumers", ":events"):
        assert key_slot((queue + suffix).encode()) == key_slot(queue.encode())


def _settings(tmp_path: Path, url: str, queue: str):
    (tmp_path / "settings").mkdir(exist_ok=True)
    (tmp_path / "settings" / "t.toml").write_text(f'[redis]\nurl = "{url}"\nqueue = "{queue}"\n')
    return load_settings("t", environ={"CLIPPER_SETTINGS_DIR": str(tmp_path / "settings")}, cwd=tmp_path)


def test_cluster_refuses_a_queue_without_hash_tag(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"redis\.queue 'clipper:jobs' has no hash tag.*\{clipper\}:jobs"):
        _settings(tmp_path, "redis+cluster://127.0.0.1:7000", "clipper:jobs")
    assert _settings(tmp_path, "redis+cluster://127.0.0.1:7000", "{clipper}:jobs").redis.queue == "{clipper}:jobs"
    # one server or Sentinel: one keyspace, any name works
    assert _settings(tmp_path, "redis+sentinel://127.0.0.1:1/m", "clipper:jobs").redis.queue == "clipper:jobs"


def test_bad_topology_url_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"redis\.url: .*master_name"):
        _settings(tmp_path, "redis+sentinel://127.0.0.1:1", "q")
    with pytest.raises(SettingsError, match=r"redis\.url: .*must start with"):
        _settings(tmp_path, "http://x", "q")
