"""Step leases and once-only claims, as Redis holds them (the keeper thread and the step wrapper
that use them are coordination/leases.py).

A step takes its lease (a key with an owner token and an expiry) before it works, and the lease is
indexed fleet-wide by when it runs out (keys.LEASES). A lease that runs out means its worker died;
the watchdog reads only the index's due entries (``take_dead_leases``), so its work is bounded by
the steps that died, not by the jobs in Redis. A claim (SET NX) makes "enqueue this once" happen once.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Protocol

import redis

from framefleet.tasks.job.keys import LEASES, JobKeys
from framefleet.tasks.job.redis import script, state_client

if TYPE_CHECKING:
    from framefleet.tasks.job.model import Job

log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


class HeldLease(Protocol):
    """A step's lease as the step wrapper holds it (coordination/leases.py)."""

    step: str
    owner: str

    def released_by_write(self) -> None:
        """The write that stored the step's outcome released the lease (if its owner still held it)."""


class Leases:
    def __init__(self, job: "Job"):
        self.job, self.r, self.keys = job, job.r, job.keys
        # The running step's lease, which the write that stores the step's outcome releases in the
        # same script (Job.write_if_alive ``outcome``); set by the step wrapper.
        self.finishing: HeldLease | None = None
        # The lease of a running step whose ``after`` dispatches the job (an enhancement, a
        # selection): the round count that ends a dispatch which enqueued a round releases it in the
        # same script (Rounds.count_round); set by the step wrapper.
        self.dispatching: HeldLease | None = None

    def release_keys(self, step: str) -> list[str]:
        return [self.keys.lease(step), LEASES]

    def acquire(self, step: str, owner: str, ttl_ms: int, while_open: bool = False, reads: tuple[tuple, ...] = (),
                then: tuple[tuple, ...] = ()) -> tuple[int, list, list]:
        """(1, the replies of ``reads``, the replies of ``then``) when ``owner`` now holds the step's
        lease, (0, [], []) when another copy does; with ``while_open``, (-1, [], []) when the job is
        closed (cancelled or finalizing). One transaction: the reads see the lease as it was taken,
        so a copy that finished before is seen by its outcome.

        A transaction, not a script: Lua's own machinery costs Redis several times what these
        commands do, and about 7 steps a frame take a lease. ``SET NX`` decides, and the lease's
        owner is read back in the same transaction, so a transaction that a lost reply sent again
        finds the lease it took. The lease is indexed with ``ZADD NX``, which a copy that did not
        take it cannot change: a lease's key exists only while its entry does (both are set here; a
        release removes the key with its entry or first, and the watchdog takes an entry only once
        its key is gone). A lease taken on a closed job, or beside a read that failed, is given back
        at once, in a second call (a worker that dies in between leaves it to run out; the
        watchdog's re-drive then finds the job closed); a copy that takes over from one that died
        or raised moves that copy's entry's deadline on, in a second call too."""
        lease = self.keys.lease(step)
        pipe = self.r.pipeline()
        if while_open:
            pipe.exists(self.keys.cancelled, self.keys.finalized)
        deadline = now_ms() + ttl_ms
        pipe.set(lease, owner, nx=True, px=ttl_ms).get(lease).zadd(LEASES, {lease: deadline}, nx=True)
        for command in (*reads, *then):
            pipe.execute_command(*command)
        replies = pipe.execute(raise_on_error=False)
        closed = replies.pop(0) if while_open else 0
        taken, indexed, replies = replies[1] == owner, replies[2], replies[3:]
        if not taken:
            return (-1 if closed else 0), [], []
        failed = next((reply for reply in replies if isinstance(reply, Exception)), None)
        if closed or failed is not None:
            self.release(step, owner, finished=True)
            if closed:
                return -1, [], []
            raise failed
        if not indexed:  # taken over: the entry still holds the former holder's deadline
            try:
                self.r.zadd(LEASES, {lease: deadline}, xx=True)
            except redis.RedisError as error:  # the watchdog leaves a held lease's entry; a renewal moves it
                log.warning("could not move the deadline of lease %s on: %s", lease, error)
        return 1, replies[:len(reads)], replies[len(reads):]

    def renew(self, step: str, owner: str, ttl_ms: int) -> bool:
        return bool(script(self.r, "renew_lease")(keys=[self.keys.lease(step), LEASES],
                                                  args=[owner, ttl_ms, now_ms() + ttl_ms]))

    def release(self, step: str, owner: str, finished: bool) -> None:
        """``finished``: the step's outcome is stored, so the watchdog has nothing to re-drive.
        Otherwise (the step raised) the watchdog re-drives it at its next round."""
        script(self.r, "release_lease")(keys=self.release_keys(step), args=[owner, "1" if finished else "0", now_ms()])

    def alive(self, step: str) -> bool:
        return bool(self.r.exists(self.keys.lease(step)))

    def holders(self, steps: list[str]) -> list[str | None]:
        """Each step's lease owner, None where nobody holds it (one round trip)."""
        return self.r.mget([self.keys.lease(step) for step in steps]) if steps else []

    def running_steps(self) -> list[str]:
        """The job's steps that hold a lease or died holding one (read from the fleet's index:
        bounded by the steps in flight, for resume and the watchdog only)."""
        prefix = self.keys.lease_prefix
        return [lease.removeprefix(prefix) for lease, _ in self.r.zscan_iter(LEASES, match=f"{prefix}*", count=500)]

    def count_redrives(self, steps: list[str]) -> dict[str, int]:
        """Count one more re-drive of each step; how often each has been re-driven."""
        pipe = self.r.pipeline(transaction=False)
        for step in steps:
            pipe.hincrby(self.keys.redrives, step, 1)
        pipe.expire(self.keys.redrives, self.job.ttl)
        return dict(zip(steps, pipe.execute()[:-1]))

    def redrives(self, step: str) -> int:
        """How often the watchdog re-drove ``step`` (``count_redrives``)."""
        return int(self.r.hget(self.keys.redrives, step) or 0)

    def claim(self, step: str) -> bool:
        """True for the first caller only: a redelivered task must not enqueue a step twice."""
        return bool(self.r.set(self.keys.claim(step), "1", nx=True, ex=self.job.ttl))

    def unclaim(self, step: str) -> None:
        """Give a claim back when what it guarded could not be done (e.g. the send failed)."""
        self.r.delete(self.keys.claim(step))


def take_dead_leases(limit: int = 1000, client: redis.Redis | None = None) -> dict[str, list[str]]:
    """The steps whose lease ran out, taken off the index: job id → steps (at most ``limit``)."""
    dead: dict[str, list[str]] = {}
    for lease in script(client or state_client(), "take_dead_leases")(keys=[LEASES], args=[now_ms(), limit]):
        job_id, step = JobKeys.of_lease(lease)
        dead.setdefault(job_id, []).append(step)
    return dead
