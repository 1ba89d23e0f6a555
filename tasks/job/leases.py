"""Step leases and once-only claims, as Redis holds them (the keeper thread and the step wrapper
that use them are coordination/leases.py).

A step takes its lease (a key with an owner token and an expiry) before it works and lists itself
as running; a lease that expires while listed means its worker died, and the watchdog re-drives
that step. A claim (SET NX) makes "enqueue this once" happen once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from framefleet.tasks.job.errors import JobNotFound
from framefleet.tasks.job.redis import script

if TYPE_CHECKING:
    from framefleet.tasks.job.model import Job


class Leases:
    def __init__(self, job: "Job"):
        self.job, self.r, self.keys = job, job.r, job.keys

    def acquire(self, step: str, owner: str, ttl_ms: int) -> bool:
        """True when ``owner`` now holds the step's lease; JobNotFound when the job is gone."""
        taken = script(self.r, "acquire_lease")(keys=[self.keys.lease(step), self.keys.running, self.keys.spec],
                                                args=[owner, step, ttl_ms, self.job.ttl])
        if taken == -1:
            raise JobNotFound(f"job_id: no job {self.job.id!r} (it expired or was removed while its step waited)")
        return bool(taken)

    def renew(self, step: str, owner: str, ttl_ms: int) -> bool:
        return bool(script(self.r, "renew_if_owner")(keys=[self.keys.lease(step)], args=[owner, ttl_ms]))

    def release(self, step: str, owner: str, finished: bool) -> None:
        """``finished``: the step's outcome is stored, so the watchdog has nothing to re-drive.
        Otherwise the step stays listed as running with no live lease, and the watchdog re-drives it."""
        script(self.r, "release_lease")(keys=[self.keys.lease(step), self.keys.running, self.keys.redrives],
                                        args=[owner, step, "1" if finished else "0"])

    def alive(self, step: str) -> bool:
        return bool(self.r.exists(self.keys.lease(step)))

    def running_steps(self) -> list[str]:
        """Steps started and not finished."""
        return self.r.hkeys(self.keys.running)

    def take_dead(self) -> dict[str, int]:
        """Running steps whose lease expired (their worker died) → how often each was re-driven now."""
        reply = script(self.r, "take_dead_steps")(keys=[self.keys.running, self.keys.redrives],
                                                  args=[self.keys.lease_prefix])
        self.r.expire(self.keys.redrives, self.job.ttl)
        return {reply[i]: int(reply[i + 1]) for i in range(0, len(reply), 2)}

    def claim(self, step: str) -> bool:
        """True for the first caller only: a redelivered task must not enqueue a step twice."""
        return bool(self.r.set(self.keys.claim(step), "1", nx=True, ex=self.job.ttl))

    def unclaim(self, step: str) -> None:
        """Give a claim back when what it guarded could not be done (e.g. the send failed)."""
        self.r.delete(self.keys.claim(step))
