"""The spending cap's book (coordination/budget.py decides what to reserve): the estimated spend
committed so far, reserved atomically against the cap, what each round reserved, and the
degradations the guard made."""

from __future__ import annotations

from typing import TYPE_CHECKING

from framefleet.tasks.job.redis import script

if TYPE_CHECKING:
    from framefleet.tasks.job.model import Job


class BudgetStore:
    def __init__(self, job: "Job"):
        self.job, self.r, self.keys = job, job.r, job.keys

    def reserve(self, cap: float, amount: float, keep_free: float = 0.0) -> bool:
        """Reserve ``amount`` if it fits under ``cap`` with ``keep_free`` left over (one script:
        parallel calls of one job cannot all pass the check)."""
        return bool(script(self.r, "reserve_spend")(keys=[self.keys.budget], args=[cap, amount, keep_free,
                                                                                    self.job.ttl]))

    def committed(self) -> float:
        return float(self.r.get(self.keys.budget) or 0.0)

    def round_reservation(self, round_id: str) -> int | None:
        reserved = self.r.get(self.keys.budget_round(round_id))
        return None if reserved is None else int(reserved)

    def set_round_reservation(self, round_id: str, count: int) -> None:
        self.r.set(self.keys.budget_round(round_id), count, ex=self.job.ttl)

    def add_degradation(self, note: str) -> None:
        self.job.write_if_alive(("RPUSH", self.keys.degradations, note))

    def degradations(self) -> list[str]:
        return self.r.lrange(self.keys.degradations, 0, -1)
