"""How clipper reaches Redis: one server, a Sentinel-managed master, or a Redis Cluster.

`redis.url` names the topology, so one setting (or one `CLIPPER_REDIS__URL`) says everything:

    redis://, rediss://, unix://                         one server (redis-py's URL rules)
    redis+sentinel://[user:password@]host:port,.../master_name[/db]   a master found through Sentinels
    redis+cluster://[user:password@]host:port,...[/]                   a Redis Cluster (startup nodes)

(`rediss+sentinel://` and `rediss+cluster://` speak TLS to the data nodes.) Sentinel and Cluster
clients follow a failover by themselves: the Sentinel pool asks the Sentinels for the master
again when a connection breaks or the old master turns read-only; the cluster client re-reads
the slot map on MOVED or a lost node.

This module also owns what Redis's answers mean for durability: which errors are "trouble"
(wait and try again) rather than about one item, `WaitForReplicas` (WAIT must run on the very
connection that made the write, so the write and the WAIT go out in one pipeline), and the
warnings a daemon logs at start. It knows connections and topologies, not queue keys or
transitions.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script

from clipper.logs import scrub

if TYPE_CHECKING:  # settings validates URLs with this module: no import cycle at run time
    from clipper.settings import RedisSettings

RedisClient = redis.Redis | RedisCluster

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
_DEFAULT_PORTS = {"sentinel": 26379, "cluster": 6379}


# Redis is away or cannot take writes for now: wait, keep every outcome, try again.
REDIS_TROUBLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.OutOfMemoryError, redis.ReadOnlyError,
                redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError)
# UNBLOCKED: a blocking call (BLMOVE) cut short because its master was demoted in a failover
_TROUBLE_REPLIES = ("BUSY", "LOADING", "MASTERDOWN", "NOREPLICAS", "MISCONF", "UNBLOCKED")


def redis_trouble(exc: redis.RedisError) -> bool:
    """True for errors that say Redis is away or refuses writes for now (wait and retry);
    False for errors about one command's keys or arguments (deal with that item)."""
    return isinstance(exc, REDIS_TROUBLE) or str(exc).startswith(_TROUBLE_REPLIES)


@dataclass(frozen=True)
class Topology:
    """What a `redis+sentinel://` or `redis+cluster://` URL says."""

    kind: Literal["sentinel", "cluster"]
    nodes: tuple[tuple[str, int], ...]
    tls: bool = False
    username: str | None = None
    password: str | None = None
    master_name: str | None = None
    db: int = 0


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0] in CLUSTER_SCHEMES


def hash_tag(key: str) -> str | None:
    """The part of `key` Redis Cluster hashes instead of the whole key: the text between the
    first `{` and the first `}` after it, when not empty (the cluster spec's rule)."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return key[start + 1:end] if end > start + 1 else None


def cluster_queue_problem(queue: str) -> str | None:
    """Why `queue` cannot be used on a Redis Cluster, or None. Every key is `queue` + a suffix
    without braces, so all land in one slot exactly when `queue` itself has a hash tag; the
    name is not rewritten for the user, since producers push to it by that name."""
    if hash_tag(queue) is not None:
        return None
    return (f"{queue!r} has no hash tag, so on a Redis Cluster its keys ({queue}:retry, {queue}:job:<id>, ...) "
            f"would spread over slots and the queue's atomic moves would fail; name it with one, "
            f"e.g. '{{{queue}}}' or '{{clipper}}:jobs', and have producers push there")


def _node(text: str, default_port: int) -> tuple[str, int]:
    host, port = text, str(default_port)
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else port
    elif ":" in text:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad node {text!r}: expected host:port")
    return host, int(port)


def parse_topology(url: str) -> Topology | None:
    """The Sentinel or Cluster URL's parts; None for a one-server URL. Raises ValueError naming
    what is wrong (the settings loader turns it into an error that names `redis.url`)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SENTINEL_SCHEMES + CLUSTER_SCHEMES:
        return None
    kind: Literal["sentinel", "cluster"] = "sentinel" if scheme in SENTINEL_SCHEMES else "cluster"
    netloc, _, path = rest.partition("/")
    credentials, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = credentials.partition(":")
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(secret) if colon else None
    nodes = tuple(_node(h, _DEFAULT_PORTS[kind]) for h in hosts.split(",") if h)
    if not nodes:
        raise ValueError(f"{scheme}:// needs at least one host:port")
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    master_name, db = None, 0
    if kind == "sentinel":
        if not parts or len(parts) > 2:
            raise ValueError("expected redis+sentinel://host:port,.../master_name[/db]")
        master_name = urllib.parse.unquote(parts[0])
        db = _db(parts[1]) if len(parts) == 2 else 0
    elif parts and parts != ["0"]:
        raise ValueError("a Redis Cluster has only database 0: expected redis+cluster://host:port,...[/]")
    return Topology(kind, nodes, scheme.startswith("rediss"), username, password, master_name, db)


def _db(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"database must be a number, not {text!r}")
    return int(text)


def unreachable(settings: RedisSettings, exc: Exception) -> str:
    """The one-line reason Redis could not be reached (credentials scrubbed from the URL)."""
    return scrub(f"cannot reach Redis at {settings.url}: {exc}")


def connect_redis(settings: RedisSettings) -> RedisClient:
    """The one way clipper connects: the socket timeout is at least 3 s, since a claim blocks
    in BLMOVE for up to 1 s and must not be mistaken for a dead connection."""
    timeouts: dict[str, Any] = {"socket_timeout": max(settings.socket_timeout, 3.0),
                                "socket_connect_timeout": settings.socket_timeout}
    topology = parse_topology(settings.url)
    if topology is None:
        return redis.Redis.from_url(settings.url, health_check_interval=10, **timeouts)
    auth: dict[str, Any] = {"username": topology.username, "password": topology.password, "ssl": topology.tls}
    if topology.kind == "cluster":
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in topology.nodes], **auth, **timeouts)
    # Sentinels are asked with the same timeouts, without the data nodes' credentials or TLS
    sentinels = redis.Sentinel(list(topology.nodes), sentinel_kwargs=dict(timeouts), **timeouts)
    return sentinels.master_for(topology.master_name, db=topology.db, health_check_interval=10, **auth, **timeouts)


class WaitFailed(redis.ConnectionError):
    """WAIT itself failed (not timed out): whether the write survives is unknown."""


@dataclass(frozen=True)
class WaitForReplicas:
    """`WAIT replicas timeout` after a write, on the write's own connection (WAIT counts the
    replicas that have this connection's last write). Returns (the write's result, replicas
    that acknowledged it): fewer than asked means the timeout passed first; the write stands
    either way (Redis cannot take it back), so the caller only reports it."""

    replicas: int
    timeout: float

    def command(self, client: RedisClient, key: str, *command: Any) -> tuple[Any, int]:
        pipe = client.pipeline(transaction=False)
        pipe.execute_command(*command)
        wait = ("WAIT", self.replicas, int(self.timeout * 1000))
        if isinstance(client, RedisCluster):  # the node that took the write: the owner of its key's slot
            pipe.execute_command(*wait, target_nodes=client.get_node_from_key(key))
        else:
            pipe.execute_command(*wait)
        result, acked = pipe.execute(raise_on_error=False)
        if isinstance(result, Exception):
            raise result
        if isinstance(acked, Exception):
            # e.g. UNBLOCKED: the master was demoted while we waited, and a write its replica
            # had not taken is gone with it. Unknown durability is Redis trouble: the caller
            # keeps the outcome and records it again on the new master (transitions repeat safely).
            raise WaitFailed(f"WAIT after {command[0]} failed, the write may be lost: {acked}") from acked
        return result, int(acked)

    def script(self, client: RedisClient, script: Script, keys: list[Any], args: list[Any]) -> tuple[Any, int]:
        """A registered script, loading it when the server does not know it (a new master
        after a failover has an empty script cache); a NOSCRIPT reply means it did not run."""
        try:
            return self.command(client, keys[0], "EVALSHA", script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            script.sha = client.script_load(script.script)
            return self.command(client, keys[0], "EVALSHA", script.sha, len(keys), *keys, *args)


def wait_policy(settings: RedisSettings) -> WaitForReplicas | None:
    """redis.wait_replicas as a policy; None when it is off (0, the default)."""
    return WaitForReplicas(settings.wait_replicas, settings.wait_timeout) if settings.wait_replicas else None


def durability_warnings(client: RedisClient, queue: str, wait: WaitForReplicas | None) -> list[str]:
    """Redis is the system of record: eviction or no persistence can drop queued items, and a
    master with fewer replicas than redis.wait_replicas makes every transition wait."""
    warnings = []
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
        aof = client.config_get("appendonly").get("appendonly")
        save = client.config_get("save").get("save")
    except redis.ResponseError:
        return ["cannot read Redis CONFIG (managed Redis?): check maxmemory-policy=noeviction and persistence yourself"]
    if policy and policy != "noeviction":
        warnings.append(f"Redis maxmemory-policy is {policy!r}, not 'noeviction': queued items can be evicted")
    if aof == "no" and not save:
        warnings.append("Redis persistence is off (appendonly no, no save points): a Redis restart loses every queued item")
    shortfall = wait and replica_shortfall(client, queue, wait.replicas)
    return warnings + ([shortfall] if shortfall else [])


def replica_shortfall(client: RedisClient, key: str, wanted: int) -> str | None:
    """Why redis.wait_replicas cannot be met right now by the master holding `key`, or None."""
    if isinstance(client, RedisCluster):
        info = client.info("replication", target_nodes=client.get_node_from_key(key))
    else:
        info = client.info("replication")
    connected = int(info.get("connected_slaves", 0))
    if connected >= wanted:
        return None
    return (f"redis.wait_replicas = {wanted}, but the master has {connected} connected replica(s): every "
            f"transition waits redis.wait_timeout until enough replicas are back")
