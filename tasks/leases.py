"""Step leases: at most one running copy of each step of a job, and liveness for the watchdog.

Celery delivers at least once, operators resume and the watchdog re-drives, so any step can be
started twice at the same time. A step takes a lease (a Redis key holding its owner token, with an
expiry) before it does work; a second copy finds the lease held and waits for the first copy's
result or exits. While the step runs, one keeper thread per process renews its leases, so a lease
that expires means its holder died: the watchdog re-drives exactly those steps.

Keys (expire with the job):
  framefleet:job:{id}:lease:{step}   owner token, PX = lease_ttl_s, renewed every ttl/3
  framefleet:job:{id}:running        hash step → re-drive count: steps started and not finished
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid

import redis

log = logging.getLogger(__name__)

# Renew or release only a lease this owner still holds (a lease that expired and was taken over
# must not be extended or deleted by its former owner).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def lease_key(job_id: str, step: str) -> str:
    return f"framefleet:job:{job_id}:lease:{step}"


def running_key(job_id: str) -> str:
    return f"framefleet:job:{job_id}:running"


class LeaseKeeper:
    """One thread per process that renews every lease this process holds."""

    def __init__(self) -> None:
        self._leases: dict[str, "Lease"] = {}
        self._lock = threading.Lock()
        self._pid: int | None = None

    def add(self, lease: "Lease") -> None:
        with self._lock:
            self._leases[lease.key] = lease
            if self._pid != os.getpid():  # first lease in this process (or after a fork)
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="framefleet-lease-keeper", daemon=True).start()

    def remove(self, lease: "Lease") -> None:
        with self._lock:
            self._leases.pop(lease.key, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                leases = list(self._leases.values())
            interval = min((lease.ttl_s for lease in leases), default=3.0) / 3
            for lease in leases:
                try:
                    if not lease.renew():
                        log.warning("lease %s was lost (expired and taken over)", lease.key)
                        self.remove(lease)
                except redis.RedisError as error:  # Redis restarting: try again next round
                    log.warning("could not renew lease %s: %s", lease.key, error)
            time.sleep(interval)


_keeper = LeaseKeeper()


class Lease:
    """A step's lease: ``acquire()`` once, then ``release(finished=...)`` when the step ends."""

    def __init__(self, client: redis.Redis, job_id: str, step: str, ttl_s: float, job_ttl_s: int):
        self.r, self.job_id, self.step, self.ttl_s, self.job_ttl_s = client, job_id, step, ttl_s, job_ttl_s
        self.key = lease_key(job_id, step)
        self.owner = uuid.uuid4().hex
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def acquire(self) -> bool:
        if not self.r.set(self.key, self.owner, nx=True, px=int(self.ttl_s * 1000)):
            return False
        pipe = self.r.pipeline()
        pipe.hsetnx(running_key(self.job_id), self.step, 0)
        pipe.expire(running_key(self.job_id), self.job_ttl_s)
        pipe.execute()
        _keeper.add(self)
        return True

    def renew(self) -> bool:
        return bool(self._renew(keys=[self.key], args=[self.owner, int(self.ttl_s * 1000)]))

    def release(self, finished: bool) -> None:
        """``finished``: the step's outcome is stored, so the watchdog has nothing to re-drive.
        Otherwise (the step raised) the step stays listed as running with no live lease, and the
        watchdog re-drives it."""
        _keeper.remove(self)
        if finished:
            self.r.hdel(running_key(self.job_id), self.step)
        self._release(keys=[self.key], args=[self.owner])

    def held_by_other(self) -> bool:
        holder = self.r.get(self.key)
        return holder is not None and holder != self.owner


def wait_for(done, lease: Lease, poll_s: float = 0.2, timeout_s: float | None = None):
    """The second copy of a step: wait until ``done()`` returns a value (the first copy's result),
    or until the first copy's lease is gone (it died) and this copy takes the lease over.

    Returns (result, None) when the first copy finished, or (None, lease) when this copy now holds
    the lease and must do the work itself.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        result = done()
        if result is not None:
            return result, None
        if lease.acquire():
            result = done()  # finished between the check and the acquire
            if result is not None:
                lease.release(finished=True)
                return result, None
            return None, lease
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"step {lease.step} of {lease.job_id} is held by another worker")
        time.sleep(poll_s)


def running_steps(client: redis.Redis, job_id: str) -> dict[str, int]:
    """Steps started and not finished → how often the watchdog re-drove them."""
    return {step: int(count) for step, count in client.hgetall(running_key(job_id)).items()}


def lease_alive(client: redis.Redis, job_id: str, step: str) -> bool:
    return bool(client.exists(lease_key(job_id, step)))
