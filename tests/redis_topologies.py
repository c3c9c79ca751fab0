"""Production Redis topologies for the integration tests, from the same Debian `redis-server`:
a master + replica watched by three Sentinels, and a 3-master/3-replica Redis Cluster.

Plain classes like those of services.py (every node a `RedisServer` under its own directory,
on a free loopback port, killed with pytest). Each topology is started once per session; the
tests that fail a master over call `restore()` afterwards, which brings every node back and
waits until the topology is whole again (a master with a replica that is in sync), so the
next test starts from the same shape, whichever node is master now.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import redis as redis_lib
from redis.cluster import ClusterNode, RedisCluster
from services import _PDEATHSIG, LOOPBACK, RedisServer, _terminate, free_port, wait_for

MASTER_NAME = "clipper-master"
# a replica (re)syncs at once instead of after the default 5 s pause for more replicas to join
_FAST_SYNC = ("--repl-diskless-sync-delay", "0")


class SentinelSet:
    """A master, one replica and three Sentinels (quorum 2, a master is down after 1 s)."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.nodes = [RedisServer(self.dir / "a", extra_args=_FAST_SYNC), RedisServer(self.dir / "b", extra_args=_FAST_SYNC)]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen | None] = [None, None, None]

    def url(self, db: int = 0) -> str:
        hosts = ",".join(f"{LOOPBACK}:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/{db}"

    def start(self) -> SentinelSet:
        a, b = self.nodes
        a.start()
        b.extra_args = (*_FAST_SYNC, "--replicaof", LOOPBACK, str(a.port))
        b.start()
        for i, port in enumerate(self.sentinel_ports):
            self.sentinels[i] = self._start_sentinel(i, port, a.port)
        self.wait_whole()
        return self

    def _start_sentinel(self, index: int, port: int, master_port: int) -> subprocess.Popen:
        home = self.dir / f"sentinel{index}"
        home.mkdir(parents=True, exist_ok=True)
        conf = home / "sentinel.conf"  # Sentinel rewrites its own config: one file each
        conf.write_text(f"port {port}\nbind {LOOPBACK}\ndir {home}\n"
                        f"sentinel monitor {MASTER_NAME} {LOOPBACK} {master_port} 2\n"
                        f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                        f"sentinel failover-timeout {MASTER_NAME} 4000\n"
                        f"sentinel parallel-syncs {MASTER_NAME} 1\n")
        log = open(home / "sentinel.log", "ab")
        try:
            return subprocess.Popen([*_PDEATHSIG, "redis-server", str(conf), "--sentinel"], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()

    def sentinel(self, index: int = 0) -> redis_lib.Redis:
        return redis_lib.Redis(host=LOOPBACK, port=self.sentinel_ports[index], socket_timeout=5, decode_responses=True)

    def master_port(self) -> int:
        """The master as every Sentinel sees it (they agree once a failover is over)."""
        ports = {int(self.sentinel(i).sentinel_get_master_addr_by_name(MASTER_NAME)[1]) for i in range(3)}
        if len(ports) != 1:
            raise AssertionError(f"Sentinels disagree on the master: {ports}")
        return ports.pop()

    def master(self) -> RedisServer:
        port = self.master_port()
        return next(n for n in self.nodes if n.port == port)

    def replica(self) -> RedisServer:
        port = self.master_port()
        return next(n for n in self.nodes if n.port != port)

    def client(self) -> redis_lib.Redis:
        """A client of the current master that follows failovers (what clipper itself uses)."""
        sentinels = redis_lib.Sentinel([(LOOPBACK, p) for p in self.sentinel_ports], socket_timeout=5)
        return sentinels.master_for(MASTER_NAME, socket_timeout=5)

    def wait_whole(self, timeout: float = 60) -> None:
        """Every Sentinel knows the master, the other node replicates it in sync, and every
        Sentinel has seen the other Sentinels and the replica (so a failover can happen)."""
        def whole() -> bool:
            master = self.master()
            replica = self.replica().client()
            if replica.info("replication").get("role") == "master":
                # a demoted master: Sentinel would turn it into a replica at its next INFO poll
                # (up to 10 s); do it now, as an operator would
                replica.replicaof(LOOPBACK, master.port)
            info = master.client().info("replication")
            if info.get("role") != "master" or info.get("connected_slaves", 0) < 1:
                return False
            replica = self.replica().client().info("replication")
            if replica.get("master_link_status") != "up" or replica.get("master_port") != master.port:
                return False
            for i in range(3):
                state = self.sentinel(i).sentinel_master(MASTER_NAME)
                if state["num-other-sentinels"] < 2 or state["num-slaves"] < 1 or "s_down" in state["flags"]:
                    return False
            return True

        wait_for(whole, timeout, "the Sentinel topology to be whole (master, replica in sync, 3 Sentinels)",
                 interval=0.2)

    def failover(self) -> int:
        """`SENTINEL FAILOVER`: the replica becomes master; returns the new master's port."""
        old = self.master_port()
        self.sentinel(0).execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        return self.wait_new_master(old)

    def wait_new_master(self, old_port: int, timeout: float = 60) -> int:
        return wait_for(lambda: self.master_port() != old_port and self.master_port(), timeout,
                        f"the Sentinels to promote a new master (the old one was on port {old_port})", interval=0.2)

    def restore(self) -> None:
        """Bring back a killed node as a replica of the current master, then wait until whole."""
        master = self.master()
        for node in self.nodes:
            if not node.running:
                node.extra_args = (*_FAST_SYNC, "--replicaof", LOOPBACK, str(master.port))
                node.start()
        self.wait_whole()

    def flush(self) -> None:
        client = self.client()
        client.flushall()
        client.close()

    def stop(self) -> None:
        for proc in self.sentinels:
            _terminate(proc, 5)
        for node in self.nodes:
            node.stop()


class ClusterSet:
    """Six cluster-enabled nodes made into 3 masters with one replica each by `redis-cli --cluster create`."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        cluster_args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", "2000", *_FAST_SYNC)
        self.nodes = [RedisServer(self.dir / f"n{i}", extra_args=cluster_args) for i in range(6)]

    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{LOOPBACK}:{n.port}" for n in self.nodes[:3]) + "/"

    def start(self) -> ClusterSet:
        for node in self.nodes:
            node.start()
        create = ["redis-cli", "--cluster", "create", *(f"{LOOPBACK}:{n.port}" for n in self.nodes),
                  "--cluster-replicas", "1", "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")
        self.wait_whole()
        return self

    def client(self, **kwargs: Any) -> RedisCluster:
        kwargs.setdefault("socket_timeout", 5)
        return RedisCluster(startup_nodes=[ClusterNode(LOOPBACK, n.port) for n in self.nodes], **kwargs)

    def node_info(self, node: RedisServer, section: str = "replication") -> dict[str, Any]:
        return node.client().info(section)

    def wait_whole(self, timeout: float = 60) -> None:
        """Every node says cluster_state:ok, and there are 3 masters each with a replica in sync."""
        def whole() -> bool:
            masters = 0
            for node in self.nodes:
                if "cluster_state:ok" not in node.client(decode_responses=True).execute_command("CLUSTER", "INFO"):
                    return False
                info = self.node_info(node)
                if info["role"] == "master":
                    masters += info.get("connected_slaves", 0) >= 1
                elif info.get("master_link_status") != "up":
                    return False
            return masters == 3

        wait_for(whole, timeout, "the cluster to be whole (3 masters with a replica in sync)", interval=0.2)

    def owner_of(self, key: str) -> RedisServer:
        """The master node that owns `key`'s slot now."""
        node = self.client().get_node_from_key(key)
        return next(n for n in self.nodes if n.port == node.port)

    def replica_of(self, master: RedisServer) -> RedisServer:
        master_id = master.client(decode_responses=True).execute_command("CLUSTER", "MYID")
        lines = master.client(decode_responses=True).execute_command("CLUSTER", "REPLICAS", master_id)
        ports = {int(line.split()[1].split("@")[0].rsplit(":", 1)[1]) for line in lines}
        found = [n for n in self.nodes if n.port in ports]
        if not found:
            raise AssertionError(f"no replica of the master on port {master.port}")
        return found[0]

    def failover(self, key: str) -> RedisServer:
        """`CLUSTER FAILOVER` on the replica of the master owning `key`'s slot (the coordinated
        manual failover an operator runs before maintenance); returns the new owner."""
        old = self.owner_of(key)
        replica = self.replica_of(old)
        replica.client().execute_command("CLUSTER", "FAILOVER")
        wait_for(lambda: self.owner_of(key).port == replica.port, 60,
                 f"the replica on port {replica.port} to take over {key!r}'s slot", interval=0.2)
        self.wait_whole()
        return replica

    def restore(self) -> None:
        """Bring back any stopped node (it rejoins as it was) and wait until the cluster is whole."""
        for node in self.nodes:
            node.start()
        self.wait_whole()

    def flush(self) -> None:
        client = self.client()
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
        client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
