"""Start and stop worker processes, one per queue, the way `framefleet demo` and the tests do."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from framefleet.config.celery import QUEUES, WORKER_SHAPES


def worker_argv(queues: list[str], pool: str | None = None, concurrency: int | None = None,
                name: str | None = None, loglevel: str = "INFO") -> list[str]:
    """The `celery worker` command line for a set of queues, with the queue's default shape."""
    default_pool, default_concurrency = WORKER_SHAPES[queues[0]] if len(queues) == 1 else ("threads", 8)
    argv = ["worker", "-Q", ",".join(queues), "-P", pool or default_pool,
            "-c", str(concurrency or default_concurrency), "-l", loglevel, "--without-gossip", "--without-mingle"]
    if name:
        argv += ["-n", name]
    return argv


class Fleet:
    """Worker subprocesses for the given queues, sharing one environment (broker, store, ...).

    Like a process supervisor in production (Compose ``restart: always``, Kubernetes), it starts a
    worker again when it exits on its own (a crash, or an error Celery cannot recover from).
    """

    def __init__(self, env: dict[str, str], queues: tuple[str, ...] = QUEUES, log_dir: str | Path | None = None,
                 shapes: dict[str, tuple[str, int]] | None = None, beat: bool = True):
        self.env = {**os.environ, **env}
        self.queues = queues
        self.log_dir = Path(log_dir) if log_dir else None
        self.shapes = shapes or {}
        self.processes: dict[str, subprocess.Popen] = {}
        self.run_id = uuid.uuid4().hex[:6]
        self.beat = beat
        self.restarts: list[str] = []
        self._beat_dirs: list[Path] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)

    def node_name(self, queue: str, suffix: str = "") -> str:
        return f"{queue}{suffix}-{self.run_id}@{socket.gethostname()}"

    def start_worker(self, queue: str, suffix: str = "") -> subprocess.Popen:
        pool, concurrency = self.shapes.get(queue, WORKER_SHAPES[queue])
        argv = [sys.executable, "-m", "celery", "-A", "framefleet.workers.app",
                *worker_argv([queue], pool, concurrency, self.node_name(queue, suffix))]
        if self.beat and queue == "control" and not suffix:
            # The watchdog's schedule: exactly one beat per fleet, here in the first control worker.
            self._beat_dirs.append(Path(tempfile.mkdtemp(prefix="framefleet-beat-")))
            argv += ["-B", "-s", str(self._beat_dirs[-1] / "schedule")]
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = open(self.log_dir / f"{queue}{suffix}.log", "ab")
        else:
            output = subprocess.DEVNULL
        # Own process group: a Ctrl-C in the terminal reaches us, and we stop the workers in order.
        process = subprocess.Popen(argv, env=self.env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        with self._lock:
            self.processes[queue + suffix] = process
        return process

    def _supervise(self) -> None:
        while not self._stopping.wait(0.5):
            with self._lock:
                exited = [name for name, p in self.processes.items() if p.poll() is not None]
            for name in exited:
                if self._stopping.is_set():
                    return
                queue = next(q for q in QUEUES if name.startswith(q))
                self.restarts.append(name)
                self.start_worker(queue, name[len(queue):])

    def start(self, timeout_s: float = 60.0) -> "Fleet":
        try:
            for queue in self.queues:
                self.start_worker(queue)
            self.wait_ready([self.node_name(q) for q in self.queues], timeout_s)
        except BaseException:
            self.stop()  # a fleet that never came up leaves nothing running
            raise
        self._supervisor.start()
        return self

    def wait_ready(self, nodes: list[str], timeout_s: float = 60.0) -> None:
        from framefleet.workers.app import app  # the app reads the broker URL from this process's settings

        deadline = time.monotonic() + timeout_s
        waiting = set(nodes)
        while waiting:
            with self._lock:
                processes = list(self.processes.items())
            for name, process in processes:
                if process.poll() is not None and not self._supervisor.is_alive():
                    raise RuntimeError(f"worker {name} exited with code {process.returncode}")
            with app.connection_for_write() as connection:  # fresh: a pooled one may predate a Redis restart
                replies = app.control.ping(destination=list(waiting), timeout=0.5, connection=connection) or []
            for reply in replies:
                waiting -= set(reply)
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(f"workers not ready after {timeout_s}s: {sorted(waiting)}")

    def kill(self, name: str) -> None:
        """SIGKILL one worker (and its pool children): a crash that is not restarted, for fault tests."""
        with self._lock:
            process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop(self, timeout_s: float = 20.0) -> None:
        self._stopping.set()
        if self._supervisor.is_alive():
            self._supervisor.join()
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)  # warm shutdown: finish the current task
        deadline = time.monotonic() + timeout_s
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            # A child the worker forked after the SIGTERM (its embedded beat, started while the
            # worker was still coming up) never got it, and would outlive the worker.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        self.processes.clear()
        for directory in self._beat_dirs:
            shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> "Fleet":
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()
