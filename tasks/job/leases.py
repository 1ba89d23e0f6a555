"""Step leases: at most one running copy of each step of a job, and liveness for the watchdog.

Celery delivers at least once, operators resume and the watchdog re-drives, so any step can be
started twice at the same time. A step takes a lease (a Redis key holding its owner token, with an
expiry) before it does work; a second copy finds the lease held and waits for the first copy's
result or exits. While the step runs, one keeper thread per process renews its leases, so a lease
that expires means its holder died: the watchdog re-drives exactly those steps.

Keys (expire with the job):
  framefleet:job:{id}:lease:{step}   owner token, PX = lease_ttl_s, renewed every ttl/3
  framefleet:job:{id}:running        hash of steps started and not finished (by a lease holder)
  framefleet:job:{id}:redrives       hash step → how often the watchdog re-drove it
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid

import redis

from framefleet.tasks.job.redis import script
from framefleet.tasks.job.errors import JobNotFound

log = logging.getLogger(__name__)



def lease_key(job_id: str, step: str) -> str:
    return f"framefleet:job:{job_id}:lease:{step}"


def running_key(job_id: str) -> str:
    return f"framefleet:job:{job_id}:running"


def redrives_key(job_id: str) -> str:
    return f"framefleet:job:{job_id}:redrives"


class LeaseKeeper:
    """One thread per process that renews every lease this process holds."""

    def __init__(self) -> None:
        self._leases: dict[str, "Lease"] = {}
        self._lock = threading.Lock()
        self._pid: int | None = None
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        """A forked child holds none of its parent's leases (and may have copied a held lock)."""
        self._leases, self._lock, self._pid = {}, threading.Lock(), None

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
        self._acquire = script(client, "acquire_lease")
        self._renew = script(client, "renew_if_owner")
        self._release = script(client, "release_lease")

    def acquire(self) -> bool:
        """True when this copy now holds the lease; JobNotFound when the job no longer exists."""
        taken = self._acquire(keys=[self.key, running_key(self.job_id), f"framefleet:job:{self.job_id}:spec"],
                              args=[self.owner, self.step, int(self.ttl_s * 1000), self.job_ttl_s])
        if taken == -1:
            raise JobNotFound(f"job_id: no job {self.job_id!r} (it expired or was removed while its step waited)")
        if not taken:
            return False
        _keeper.add(self)
        return True

    def renew(self) -> bool:
        return bool(self._renew(keys=[self.key], args=[self.owner, int(self.ttl_s * 1000)]))

    def release(self, finished: bool) -> None:
        """``finished``: the step's outcome is stored, so the watchdog has nothing to re-drive.
        Otherwise (the step raised) the step stays listed as running with no live lease, and the
        watchdog re-drives it."""
        _keeper.remove(self)
        self._release(keys=[self.key, running_key(self.job_id), redrives_key(self.job_id)],
                      args=[self.owner, self.step, "1" if finished else "0"])


def wait_for(done, lease: Lease, poll_s: float = 0.2):
    """The second copy of a step: wait until ``done()`` returns a value (the first copy's result),
    or until the first copy's lease is gone (it died) and this copy takes the lease over.

    Returns (result, None) when the first copy finished, or (None, lease) when this copy now holds
    the lease and must do the work itself. It waits as long as the holder keeps its lease alive:
    the holder's own calls carry the deadlines (provider timeouts, fetch deadline).
    """
    while True:
        result = done()
        if result is not None:
            return result, None
        if lease.acquire():
            try:
                result = done()  # finished between the check and the acquire
            except BaseException:
                lease.release(finished=False)
                raise
            if result is not None:
                lease.release(finished=True)
                return result, None
            return None, lease
        time.sleep(poll_s)


def running_steps(client: redis.Redis, job_id: str) -> list[str]:
    """Steps started and not finished."""
    return client.hkeys(running_key(job_id))


def take_dead_steps(client: redis.Redis, job_id: str, job_ttl_s: int) -> dict[str, int]:
    """Running steps whose lease expired (their worker died) → how often each was re-driven now."""
    reply = script(client, "take_dead_steps")(keys=[running_key(job_id), redrives_key(job_id)],
                                               args=[lease_key(job_id, "")])
    client.expire(redrives_key(job_id), job_ttl_s)
    return {reply[i]: int(reply[i + 1]) for i in range(0, len(reply), 2)}


def lease_alive(client: redis.Redis, job_id: str, step: str) -> bool:
    return bool(client.exists(lease_key(job_id, step)))
