"""What a job has paid for and sent, so that nothing is paid twice or left running: the cost
counters, the LLM round ledger (a redelivered enhancement replays the rounds paid for), the
Replicate prediction ids (a redelivered variation waits for its prediction), the offline image
provider's calls (its stand-in for a bill), and the ids of the running revision's tasks (a cancel
revokes them)."""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING

from framefleet.tasks.job import metrics
from framefleet.tasks.job.keys import ANCHOR

if TYPE_CHECKING:
    from framefleet.tasks.job.model import Job


TOTAL = "total"  # ``costs``: each counter summed over the job's frames

# Cost counters the fleet's metrics also count (as ``{counter}_total``).
FLEET_COSTS = ("predictions_created", "images_stored", "straggler_cuts", "llm_calls", "prompt_tokens",
               "completion_tokens")


def llm_field(frame: str, prompt: str, iteration: int, agent: str) -> str:
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:16]  # a new prompt is a new conversation
    return f"{frame}/{digest}/{iteration}/{agent}"


def cost_metrics(usd: float = 0.0, **counts: int) -> metrics.Increments:
    """What a cost write adds to the fleet's metrics."""
    return {**{f"{counter}_total": value for counter, value in counts.items() if counter in FLEET_COSTS},
            "cost_usd_total": usd}


class Ledger:
    def __init__(self, job: "Job"):
        self.job, self.r, self.keys = job, job.r, job.keys

    # cost counters --------------------------------------------------------------------------
    def add_costs(self, frame: str, usd: float = 0.0, **counts: int) -> None:
        """Count what the frame paid for (and ``usd``, its price) in the job's ledger and, once
        written, in the fleet's metrics (job/metrics.py)."""
        if self.job.write_if_alive(*self.cost_commands(frame, **counts)):
            metrics.add(cost_metrics(usd, **counts))

    def cost_commands(self, frame: str, **counts: int) -> list[tuple]:
        """``add_costs`` as commands, for a write that records something else with them."""
        return [("HINCRBY", self.keys.cost, f"{frame}:{counter}", value) for counter, value in counts.items()]

    def costs(self) -> dict[str, dict[str, int]]:
        """{frame: {counter: value}}, and under "total" each counter summed over the frames."""
        return self.parse_costs(self.r.execute_command(*self.costs_read()))

    def costs_read(self) -> tuple:
        """The Redis read of ``costs`` (its reply: ``parse_costs``)."""
        return ("HGETALL", self.keys.cost)

    @staticmethod
    def parse_costs(raw: dict[str, str]) -> dict[str, dict[str, int]]:
        """The job's counters by frame, and their sums: summed here rather than counted on every write."""
        out: dict[str, dict[str, int]] = {}
        total: dict[str, int] = {}
        for field, value in raw.items():
            if field == ANCHOR:
                continue
            owner, counter = field.rsplit(":", 1)
            if owner == TOTAL:  # sums stored beside the frames' counters count nothing new
                continue
            out.setdefault(owner, {})[counter] = int(value)
            total[counter] = total.get(counter, 0) + int(value)
        return {**out, TOTAL: total} if out else out

    # LLM replies ----------------------------------------------------------------------------
    def llm_replies(self, frame: str, prompt: str, iterations: int, agents: tuple[str, ...]) -> dict:
        """The replies paid for in the first ``iterations`` rounds of the frame's conversation about
        ``prompt``, in one read: {(iteration, agent): reply}."""
        wanted = [(iteration, agent) for iteration in range(1, iterations + 1) for agent in agents]
        replies = self.r.hmget(self.keys.llm, [llm_field(frame, prompt, i, agent) for i, agent in wanted])
        return {key: reply for key, reply in zip(wanted, replies) if reply is not None}

    def llm_replies_while_open(self, frame: str, prompt: str, iterations: int,
                               agents: tuple[str, ...]) -> tuple[dict, bool]:
        """``llm_replies``, and whether the job is open (not cancelled or finalizing), in one
        round trip (a transaction: the replies are those of the moment the job was seen open)."""
        pipe = self.r.pipeline()
        pipe.exists(self.keys.cancelled, self.keys.finalized)
        wanted = [(iteration, agent) for iteration in range(1, iterations + 1) for agent in agents]
        pipe.hmget(self.keys.llm, [llm_field(frame, prompt, i, agent) for i, agent in wanted])
        closed, replies = pipe.execute()
        return {key: reply for key, reply in zip(wanted, replies) if reply is not None}, not closed

    def save_llm_reply(self, frame: str, prompt: str, iteration: int, agent: str, reply: str,
                       usd: float = 0.0, **counts: int) -> bool:
        """Record a paid reply with what its call cost (``add_costs``), in one write; whether the
        job is still open (False: cancelled, finalizing or gone)."""
        return self.job.write_while_open(("HSET", self.keys.llm, llm_field(frame, prompt, iteration, agent), reply),
                                         *self.cost_commands(frame, **counts),
                                         on_written=lambda: metrics.add(cost_metrics(usd, **counts)))

    # paid predictions -----------------------------------------------------------------------
    def prediction_id(self, ledger_key: str) -> str | None:
        return self.r.hget(self.keys.predictions, ledger_key)

    def record_prediction(self, ledger_key: str, prediction_id: str) -> str:
        """Record a prediction id; returns the id already recorded if another delivery won."""
        if self.r.hsetnx(self.keys.predictions, ledger_key, prediction_id):
            self.r.expire(self.keys.predictions, self.job.ttl)
            return prediction_id
        return self.r.hget(self.keys.predictions, ledger_key)

    def predictions(self) -> dict[str, str]:
        return self.r.hgetall(self.keys.predictions)

    # the offline provider's bill --------------------------------------------------------------
    def log_offline_call(self, ledger_key: str | None) -> None:
        self.job.write_if_alive(("RPUSH", self.keys.offline_calls,
                                 json.dumps({"ledger_key": ledger_key, "time": time.time()})))

    def offline_calls(self) -> list[dict]:
        return [json.loads(line) for line in self.r.lrange(self.keys.offline_calls, 0, -1)]

    # the completion callback, once per revision ------------------------------------------------
    def callback_sent_read(self, revision: int) -> tuple:
        """The Redis read of whether the revision's callback was sent (its reply: 1 or 0)."""
        return ("EXISTS", self.keys.callback_sent(revision))

    def mark_callback_sent(self, revision: int) -> None:
        self.r.set(self.keys.callback_sent(revision), "1", ex=self.job.ttl)

    # the running revision's task ids ------------------------------------------------------------
    def add_task_ids(self, ids: list[str]) -> None:
        self.job.write_if_alive(*self.task_id_commands(ids))

    def task_id_commands(self, ids: list[str]) -> tuple[tuple, ...]:
        """``add_task_ids`` as commands, for a write that records something else with them."""
        return ("SADD", self.keys.tasks, *ids), ("EXPIRE", self.keys.tasks, self.job.ttl)

    def task_ids(self) -> set[str]:
        return self.r.smembers(self.keys.tasks)

