"""Generation rounds of a job's frames: each variation's record (the straggler cut counts the
stored ones), a round's scoring result and its judged result, and the count of rounds enqueued
that a held slot waits on (coordination/slot_hold.py).

A round is named by its frame, revision and prompt source (``round_id``): a redelivered or
re-driven step finds its round's records and returns them instead of paying again, and a later
revision's round never meets an earlier one's.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from framefleet.tasks.job import metrics
from framefleet.tasks.job.ledgers import cost_metrics
from framefleet.tasks.job.records import VariationRecord
from framefleet.tasks.job.redis import Prefetch, script

if TYPE_CHECKING:
    from framefleet.tasks.job.model import Job

WAKE_TTL_S = 60  # a round's wake-up list: holds last seconds at most; later ones read the count


def round_id(frame: str, revision: int, source: str) -> str:
    return f"{frame}/{revision}/{source}"


class Rounds:
    def __init__(self, job: "Job"):
        self.job, self.r, self.keys = job, job.r, job.keys
        self._kept_view: tuple[int, int, int, bool] | None = None  # prefetch_hold_view's

    def variation_read(self, frame: str, revision: int, source: str, index: int) -> tuple:
        """The Redis read of a variation's record (its reply: a VariationRecord's JSON or None)."""
        return ("HGET", self.keys.variations, f"{round_id(frame, revision, source)}/{index}")

    def save_variation(self, frame: str, revision: int, source: str, record: VariationRecord,
                       costs: dict[str, int]) -> None:
        """Record the variation and what it cost (the job's cost counters), in one write (the
        generate step's outcome)."""
        if self.job.write_if_alive(
                ("HSET", self.keys.variations, f"{round_id(frame, revision, source)}/{record.index}",
                 record.model_dump_json()),
                *self.job.ledger.cost_commands(frame, **costs), outcome=True):
            metrics.add(cost_metrics(**costs))

    def stored_times(self, frame: str, revision: int, source: str, count: int) -> list[float]:
        """When each stored variation of the round (of ``count``) was stored, earliest first."""
        fields = [f"{round_id(frame, revision, source)}/{index}" for index in range(1, count + 1)]
        records = [VariationRecord.model_validate_json(raw) for raw in self.r.hmget(self.keys.variations, fields)
                   if raw is not None]
        return sorted(record.timing[1] for record in records if record.key and record.timing)

    # a round's outcome per step: "scored" (scoring), "judged" (the judge: scoring + verdict) ---
    def outcome_read(self, step: str, frame: str, revision: int, source: str) -> tuple:
        """The Redis read of a round's outcome (its reply: the outcome's JSON or None)."""
        return ("HGET", getattr(self.keys, step), round_id(frame, revision, source))

    def outcome(self, step: str, frame: str, revision: int, source: str) -> dict | None:
        raw = self.r.execute_command(*self.outcome_read(step, frame, revision, source))
        return json.loads(raw) if raw else None

    def save_outcome(self, step: str, frame: str, revision: int, source: str, result: dict) -> None:
        self.job.write_if_alive(("HSET", getattr(self.keys, step), round_id(frame, revision, source),
                                 json.dumps(result)), outcome=True)

    def scored(self, frame: str, revision: int, source: str) -> dict | None:
        return self.outcome("scored", frame, revision, source)

    def save_scored(self, frame: str, revision: int, source: str, result: dict) -> None:
        self.save_outcome("scored", frame, revision, source, result)

    def judged(self, frame: str, revision: int, source: str) -> dict | None:
        return self.outcome("judged", frame, revision, source)

    def save_judged(self, frame: str, revision: int, source: str, result: dict) -> None:
        self.save_outcome("judged", frame, revision, source, result)

    # the round counter slot holding waits on -------------------------------------------------
    def count_round(self, wake: int) -> None:
        """One more generation round of the job was enqueued: count it and wake up to ``wake``
        variations holding their slots for it. The last write of the dispatch that enqueued it:
        it also releases the lease of the step that dispatched (``leases.dispatching``), if that
        step's copy still holds it."""
        releasing, self.job.leases.dispatching = self.job.leases.dispatching, None
        script(self.r, "count_round")(
            keys=[self.keys.rounds, self.keys.round_wake_prefix,
                  *(self.job.leases.release_keys(releasing.step) if releasing else [])],
            args=[self.job.ttl, wake, WAKE_TTL_S, releasing.owner if releasing else ""])
        if releasing:
            releasing.released_by_write()

    def enqueued(self) -> int:
        return int(self.r.get(self.keys.rounds) or 0)

    def wait_for_round(self, rounds: int, timeout_s: float) -> str | None:
        """Block until round ``rounds`` is enqueued (woken by count_round: "round"), the job closes
        (Job.cancel, Job.mark_finalized: "closed") or the timeout passed (None)."""
        woken = self.r.blpop([self.keys.round_wake(rounds)], timeout=timeout_s)
        return None if not woken else "closed" if woken[1] == "closed" else "round"

    def hold_view(self, frame: str, revision: int, source: str, count: int) -> tuple[int, int, int, bool]:
        """What a slot hold polls, in one round trip: rounds enqueued, how many of the round's
        ``count`` variations are recorded (stored or failed), how many are neither recorded nor
        running (no lease: waiting for a slot, or for a retry), and whether the job is closed. The
        view kept by ``prefetch_hold_view`` is returned instead, once."""
        kept, self._kept_view = self._kept_view, None
        if kept is not None:
            return kept
        pipe = self.r.pipeline(transaction=False)
        for read in self._hold_reads(frame, revision, source, count):
            pipe.execute_command(*read)
        return self._view(pipe.execute())

    def prefetch_hold_view(self, frame: str, revision: int, source: str, count: int) -> Prefetch:
        """``hold_view``, read ahead."""
        def keep(replies: list) -> None:
            self._kept_view = self._view(replies)

        return Prefetch(self._hold_reads(frame, revision, source, count), keep)

    def _hold_reads(self, frame: str, revision: int, source: str, count: int) -> tuple[tuple, ...]:
        steps = [f"{round_id(frame, revision, source)}/{i}" for i in range(1, count + 1)]
        return (("GET", self.keys.rounds), ("HMGET", self.keys.variations, *steps),
                ("MGET", *[self.keys.lease(f"generate:{step}") for step in steps]),
                ("EXISTS", self.keys.cancelled, self.keys.finalized))

    @staticmethod
    def _view(replies: list) -> tuple[int, int, int, bool]:
        rounds, recorded, running, closed = replies
        unstarted = sum(r is None and g is None for r, g in zip(recorded, running))
        return int(rounds or 0), sum(r is not None for r in recorded), unstarted, bool(closed)
