"""At most one running copy of each step of a job, and liveness for the watchdog.

Celery delivers at least once, operators resume and the watchdog re-drives, so any step can be
started twice at the same time. ``run_step`` is the one wrapper every step runs in: it takes the
step's lease before the work, a second copy waits for the first copy's stored result (or takes
over when the first copy's lease expired because its worker died), and the lease is released as
finished when the outcome is stored, or left for the watchdog when the step raised. While a step
runs, one keeper thread per process renews its lease (job/leases.py holds them in Redis).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Generic, NamedTuple, TypeVar

import redis
from celery.exceptions import Retry
from framefleet.config.settings import get_settings

if TYPE_CHECKING:
    from framefleet.tasks.job.model import Job
    from framefleet.tasks.job.redis import Prefetch

log = logging.getLogger(__name__)
T = TypeVar("T")


class JobClosed(Exception):
    """The job was cancelled or is finalizing: a step run ``while_open`` does not start."""


class Lease:
    """One step's lease, held by this copy once ``acquire()`` said so."""

    def __init__(self, job: "Job", step: str, while_open: bool = False):
        self.job, self.step, self.while_open = job, step, while_open
        self.ttl_ms = int(get_settings().lease_ttl_s * 1000)
        self.owner = uuid.uuid4().hex
        self.renewed = time.monotonic()  # when it was last taken or renewed
        self.read_replies: list = []
        self.then_replies: list = []
        self.released = False

    @property
    def key(self) -> str:
        return self.job.keys.lease(self.step)

    def acquire(self, *reads: tuple, then: tuple[tuple, ...] = ()) -> bool:
        """Take the lease; ``reads`` and ``then`` (Redis read commands) run in the same transaction,
        their replies kept in ``read_replies`` and ``then_replies``."""
        taken, self.read_replies, self.then_replies = self.job.leases.acquire(
            self.step, self.owner, self.ttl_ms, self.while_open, reads, then)
        if taken < 0:
            raise JobClosed(self.job.id)
        if not taken:
            return False
        self.renewed = time.monotonic()
        _keeper.add(self)
        return True

    def renew(self) -> bool:
        self.renewed = time.monotonic()
        return self.job.leases.renew(self.step, self.owner, self.ttl_ms)

    def release(self, finished: bool) -> None:
        _keeper.remove(self)
        if self.released:  # the write that stored the step's outcome released it
            return
        self.released = True
        self.job.leases.release(self.step, self.owner, finished)

    def released_by_write(self) -> None:
        self.released = True
        _keeper.remove(self)


class LeaseKeeper:
    """One thread per process that renews every lease this process holds, once a third of its
    TTL has passed since it was taken or last renewed (a short step is never renewed)."""

    def __init__(self) -> None:
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._pid: int | None = None
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        """A forked child holds none of its parent's leases (and may have copied a held lock)."""
        self._leases, self._lock, self._pid = {}, threading.Lock(), None

    def add(self, lease: Lease) -> None:
        with self._lock:
            self._leases[lease.key] = lease
            if self._pid != os.getpid():  # first lease in this process (or after a fork)
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="framefleet-lease-keeper", daemon=True).start()

    def remove(self, lease: Lease) -> None:
        with self._lock:
            if self._leases.get(lease.key) is lease:  # not a later copy's lease of the same step
                del self._leases[lease.key]

    def _run(self) -> None:
        while True:
            with self._lock:
                leases = list(self._leases.values())
            # Ticks at a sixth of the TTL: a lease is renewed at a third to a half of it.
            interval = min((lease.ttl_ms / 1000 for lease in leases), default=3.0) / 6
            for lease in leases:
                if time.monotonic() - lease.renewed < lease.ttl_ms / 3000:
                    continue
                try:
                    # A step that stored its outcome meanwhile gave its lease back: not lost.
                    if not lease.renew() and not lease.released:
                        log.warning("lease %s was lost (expired and taken over)", lease.key)
                        self.remove(lease)
                except redis.RedisError as error:  # Redis restarting: try again next round
                    log.warning("could not renew lease %s: %s", lease.key, error)
            time.sleep(interval)


_keeper = LeaseKeeper()


class Stored(NamedTuple, Generic[T]):
    """Where a step's outcome is stored: one Redis read command, and what its reply means (the
    outcome, or None while there is none). Taking the lease runs the read in the same round trip."""

    read: tuple
    parse: Callable[[Any], T | None]

    def now(self, client: redis.Redis) -> T | None:
        return self.parse(client.execute_command(*self.read))


def wait_for(stored: Stored[T], lease: Lease, prefetch: Prefetch | None = None,
             poll_s: float = 0.2) -> tuple[T | None, Lease | None]:
    """Take the step's lease, or, while another copy holds it, wait until the step's outcome is
    stored (that copy's result), or until that copy's lease is gone (it died) and this copy takes
    it over. ``prefetch``: what the work reads first, read as the lease is taken.

    Returns (result, None) when the step's outcome exists, or (None, lease) when this copy now holds
    the lease and must do the work itself. It waits as long as the holder keeps its lease alive:
    the holder's own calls carry the deadlines (provider timeouts, fetch deadline).
    """
    ahead = prefetch  # read ahead only as the step starts: a copy that waited and takes over reads afresh
    while True:
        if lease.acquire(stored.read, then=ahead.reads if ahead else ()):
            try:
                result = stored.parse(lease.read_replies[0])  # a copy that finished before this one took the lease
                if result is None and ahead is not None:
                    ahead.keep(lease.then_replies)
            except BaseException:
                lease.release(finished=False)
                raise
            if result is not None:
                lease.release(finished=True)
                return result, None
            return None, lease
        ahead = None
        result = stored.now(lease.job.r)
        if result is not None:
            return result, None
        time.sleep(poll_s)


def run_step(job: "Job", step: str, stored: Stored[T], work: Callable[[], T],
             after: Callable[[], object] | None = None, while_open: bool = False,
             prefetch: Prefetch | None = None) -> T | None:
    """Run ``work`` as step ``step`` of the job, at most one copy at a time.

    ``stored`` reads the step's outcome once it exists (None before); ``prefetch`` is what the
    work reads first (the job's spec, a frame's record or every frame's view), read in the round
    trip that takes the lease. A second copy returns that outcome instead of working; a copy that
    finds the first one's lease expired does the work. ``after`` runs once the outcome exists, in
    either copy: in the working copy while it still holds the lease, so that if it fails the step
    is re-driven.
    Without ``after``, a write that stores the outcome (``Job.write_if_alive(outcome=True)``)
    releases the lease in the same script; with an ``after`` that dispatches the job, so does the
    write that counts the round it enqueued (its last, ``Rounds.count_round``). A Celery retry of
    the work is a new message, so the lease is released as finished; any other error leaves the
    step for the watchdog.
    ``while_open``: once the job is closed (cancelled or finalizing) the step does not start and
    JobClosed is raised: the flags are read in the transaction that takes the lease, and a lease
    taken on a closed job is given back.
    """
    result, lease = wait_for(stored, Lease(job, step, while_open), prefetch)
    if lease is None:
        if after is not None:
            after()
        return result
    if after is None:  # nothing runs after the outcome is stored: its write may release the lease
        job.leases.finishing = lease
    try:
        result = work()
        if after is not None:
            job.leases.dispatching = lease  # the last write of a dispatch that enqueues a round releases it
            after()
    except Retry:
        lease.release(finished=True)
        raise
    except BaseException:
        lease.release(finished=False)
        raise
    finally:
        job.leases.finishing = job.leases.dispatching = None
    lease.release(finished=True)
    return result
