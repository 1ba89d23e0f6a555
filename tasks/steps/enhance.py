"""The two-agent prompt enhancement loop, independent of which LLM plays the agents.

Agent 1 (Creative Director) rewrites the prompt; agent 2 (Prompt Engineer) scores it 0-100 on
five dimensions and critiques it. The loop stops when the score reaches the threshold, when it
stops improving by more than ``convergence_epsilon``, or at the iteration cap, and keeps the
best-scoring prompt (not blindly the last one). Every round goes to the trace callback.
"""

from __future__ import annotations

import json
import time
from typing import Callable, Literal, Protocol

from pydantic import BaseModel

from framefleet.tasks.artifacts.keys import (FINAL_PROMPT_TRACE, ORIGINAL_PROMPT_TRACE, SUMMARY_TRACE, agent1_trace_name,
                                             agent2_trace_name)
from framefleet.tasks.providers.agents import Critique, PromptAgents


class Round(BaseModel):
    iteration: int
    prompt: str
    critique: Critique
    started: float
    finished: float
    usage: dict[str, int] = {}  # LLM calls and tokens of this round, where the agents count them


class EnhancementResult(BaseModel):
    original_prompt: str
    final_prompt: str
    final_score: float
    best_iteration: int
    stop_reason: Literal["threshold", "converged", "max_iterations", "budget"]
    rounds: list[Round]

    def summary(self) -> dict:
        return {
            "original_prompt": self.original_prompt,
            "final_prompt": self.final_prompt,
            "final_score": self.final_score,
            "best_iteration": self.best_iteration,
            "iterations": len(self.rounds),
            "stop_reason": self.stop_reason,
            "rounds": [
                {"iteration": r.iteration, "overall": r.critique.overall, "scores": r.critique.scores,
                 "started": r.started, "finished": r.finished, "seconds": round(r.finished - r.started, 3),
                 "usage": r.usage}
                for r in self.rounds
            ],
        }


TraceWriter = Callable[[str, str], None]


class BudgetExhausted(Exception):
    """Not even the first enhancement round is affordable under the job's spending cap."""


class RoundLedger(Protocol):
    """Replies already paid for, by (iteration, agent): a second run of the same enhancement
    (redelivery, a re-drive after a crash) replays them instead of asking the LLM again."""

    def get(self, iteration: int, agent: str) -> str | None: ...
    def put(self, iteration: int, agent: str, reply: str) -> None: ...


class NoLedger:
    def get(self, iteration: int, agent: str) -> str | None:
        return None

    def put(self, iteration: int, agent: str, reply: str) -> None:
        pass


def enhance_prompt_iterative(
    prompt: str,
    agents: PromptAgents,
    *,
    max_iterations: int,
    score_threshold: float,
    convergence_epsilon: float,
    trace: TraceWriter = lambda name, text: None,
    check_cancelled: Callable[[], None] = lambda: None,
    ledger: RoundLedger = NoLedger(),
    may_start_round: Callable[[int], bool] = lambda iteration: True,
) -> EnhancementResult:
    check_cancelled()  # nothing, not even the first trace file, after a cancel
    trace(ORIGINAL_PROMPT_TRACE, prompt)
    rounds: list[Round] = []
    best: Round | None = None
    current, critique = prompt, None
    stop_reason: Literal["threshold", "converged", "max_iterations", "budget"] = "max_iterations"
    for iteration in range(1, max_iterations + 1):
        check_cancelled()  # raises when the job was cancelled: no paid round after a cancel
        # The budget guard reserves each new round; a round replayed from the ledger is paid already.
        if ledger.get(iteration, "agent1") is None and not may_start_round(iteration):
            if not rounds:
                raise BudgetExhausted("budget: not even one enhancement round is affordable")
            stop_reason = "budget"
            break
        started = time.time()
        usage_before = dict(getattr(agents, "usage", {}))
        candidate = ledger.get(iteration, "agent1")
        if candidate is None:
            candidate = agents.creative_director(prompt, current, critique)
            ledger.put(iteration, "agent1", candidate)
        trace(agent1_trace_name(iteration), candidate)
        replayed = ledger.get(iteration, "agent2")
        if replayed is None:
            critique = agents.prompt_engineer(candidate)
            ledger.put(iteration, "agent2", critique.model_dump_json())
        else:
            critique = Critique.model_validate_json(replayed)
        trace(agent2_trace_name(iteration), critique.as_text())
        usage = {k: v - usage_before.get(k, 0) for k, v in getattr(agents, "usage", {}).items()}
        this_round = Round(iteration=iteration, prompt=candidate, critique=critique, started=started,
                           finished=time.time(), usage=usage)
        rounds.append(this_round)
        improved = best is None or critique.overall > best.critique.overall + convergence_epsilon
        if best is None or critique.overall > best.critique.overall:
            best = this_round
        if critique.overall >= score_threshold:
            stop_reason = "threshold"
            break
        if not improved:
            stop_reason = "converged"
            break
        current = candidate
    assert best is not None  # max_iterations >= 1
    result = EnhancementResult(original_prompt=prompt, final_prompt=best.prompt, final_score=best.critique.overall,
                               best_iteration=best.iteration, stop_reason=stop_reason, rounds=rounds)
    trace(FINAL_PROMPT_TRACE, result.final_prompt)
    trace(SUMMARY_TRACE, json.dumps(result.summary(), indent=2))
    return result
