"""Enhance one frame's prompt (llm queue): the two-agent loop, then the frame's enhancement stored.

Agent 1 (Creative Director) rewrites the prompt; agent 2 (Prompt Engineer) scores it 0-100 on
five dimensions and critiques it. The loop (``enhance_prompt_iterative``, independent of which LLM
plays the agents) stops when the score reaches the threshold, when it stops improving by more
than ``convergence_epsilon``, or at the iteration cap, and keeps the best-scoring prompt (not
blindly the last one). Every round goes to the trace files, and every reply to the job's round
ledger, so a second run of the step replays the rounds already paid for.

Any failure of the LLM stage takes the seeds' fallback: the original prompt, one image.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Callable, Literal, Protocol

from framefleet.config.settings import get_settings
from framefleet.tasks.artifacts.keys import (
    FINAL_PROMPT_TRACE,
    ORIGINAL_PROMPT_TRACE,
    SUMMARY_TRACE,
    agent1_trace_name,
    agent2_trace_name,
    trace_key,
)
from framefleet.tasks.artifacts.store import fleet_store
from framefleet.tasks.coordination.budget import BudgetGuard
from framefleet.tasks.coordination.leases import Stored
from framefleet.tasks.job import metrics
from framefleet.tasks.job.frames import StaleWrite
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.records import Enhancement, FrameRecord
from framefleet.tasks.job.states import FrameState, Note, NoteKind
from framefleet.tasks.providers import prompt_agents
from framefleet.tasks.providers.agents import Critique, PromptAgents
from framefleet.tasks.providers.ratelimit import RateLimitDeadline
from pydantic import BaseModel

log = logging.getLogger(__name__)


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
    def put(self, iteration: int, agent: str, reply: str) -> None:
        """Record a paid reply; may raise JobCancelled when the job turns out closed."""


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


# The step --------------------------------------------------------------------------------------
class JobCancelled(Exception):
    pass


class JobRoundLedger:
    """The round ledger of one frame's enhancement, in the job's ledger: what an earlier run paid
    for is read once, as the step starts (one copy of a step runs at a time), with whether the job
    is open. Recording a reply also records what the agents spent since the last one (``usage``:
    their running counts; ``price``: those counts in USD), and tells whether the job is still
    open: a closed job stops the loop before its next paid call, and a cancel check right after
    that read or a recorded reply needs no read of its own."""

    def __init__(self, job: Job, frame: str, prompt: str, iterations: int,
                 usage: Callable[[], dict[str, int]], price: Callable[[dict[str, int]], float]):
        self.job, self.frame, self.prompt, self.usage, self.price = job, frame, prompt, usage, price
        self.counted, self.recorded = dict(usage()), False
        self.replies, self.open_just_seen = job.ledger.llm_replies_while_open(frame, prompt, iterations,
                                                                              ("agent1", "agent2"))

    def get(self, iteration: int, agent: str) -> str | None:
        return self.replies.get((iteration, agent))

    def put(self, iteration: int, agent: str, reply: str) -> None:
        # The first recorded reply writes every counter (zeros too), later ones what changed.
        spent = {name: value for name, value in self.uncounted().items() if value or not self.recorded}
        counted = dict(self.usage())
        self.open_just_seen = self.job.ledger.save_llm_reply(self.frame, self.prompt, iteration, agent, reply,
                                                             self.price(spent), **spent)
        self.counted, self.recorded = counted, True
        self.replies[(iteration, agent)] = reply
        if not self.open_just_seen:
            raise JobCancelled(self.job.id)

    def uncounted(self) -> dict[str, int]:
        """What the agents spent that no recorded reply counted yet, by counter (each counter,
        zero too: the job's cost lists every counter its agents keep)."""
        return {name: value - self.counted.get(name, 0) for name, value in self.usage().items()}

    def count_the_rest(self) -> None:
        """Count what no recorded reply counted (a call that failed), or the counters at zero where
        no reply was recorded at all."""
        spent = self.uncounted()
        if any(spent.values()) or not self.recorded:
            self.job.ledger.add_costs(self.frame, self.price(spent), **spent)
            self.counted, self.recorded = dict(self.usage()), True

    def check_cancelled(self) -> None:
        """Raise JobCancelled when the job is closed (answered by the last recorded reply if nothing
        came in between)."""
        if not self.still_open():
            raise JobCancelled(self.job.id)

    def still_open(self) -> bool:
        """Whether the job is open: as the last read or recorded reply said, if nothing came in
        between; otherwise read."""
        open_just_seen, self.open_just_seen = self.open_just_seen, False
        return open_just_seen or not self.job.closed()



def stored_enhancement(job: Job, frame: str) -> Stored[Enhancement]:
    """The frame's enhancement once it is stored (the step's outcome)."""
    def parse(reply: list[str | None]) -> Enhancement | None:
        record = job.frames.parse(frame, reply)
        return record.enhancement if record.state is not FrameState.WAITING else None

    return Stored(job.frames.read_command(frame), parse)


def enhance_frame(job: Job, frame: str) -> Enhancement | None:
    """Run the two-agent loop for one frame and store the result; None when cancelled."""
    settings, store, (spec, record) = get_settings(), fleet_store(), job.spec_and_frame(frame)
    config = spec.frame_config(record)
    guard = BudgetGuard(job, spec)
    started = time.time()
    agents, ledger, open_now = None, None, None  # open_now: whether the job is open, as the loop last saw it
    traces: dict[str, str] = {}

    def usd(spent: dict[str, int]) -> float:
        if spec.providers.get("llm") != "openai":
            return 0.0
        return settings.tokens_usd(spent.get("prompt_tokens", 0), spent.get("completion_tokens", 0))

    def fallback(kind: NoteKind, text: str, error: Exception) -> tuple[str, Enhancement]:
        return record.original_prompt, Enhancement(fallback=True, error=str(error), note=Note(kind=kind, text=text))

    if not config.enhance:  # the job asked for the original prompt (e.g. an evaluation baseline)
        enhanced, enhancement = record.original_prompt, Enhancement(skipped=True)
    else:
        try:
            if "enhancement" in settings.inject_faults:
                raise RuntimeError("injected fault: enhancement")
            agents = prompt_agents(settings, f"{job.id}/{frame}")
            ledger = JobRoundLedger(job, frame, record.original_prompt, config.max_enhancement_iterations,
                                    usage=lambda: getattr(agents, "usage", {}), price=usd)
            result = enhance_prompt_iterative(
                record.original_prompt, agents,
                max_iterations=config.max_enhancement_iterations, score_threshold=config.score_threshold,
                convergence_epsilon=config.convergence_epsilon,
                trace=traces.__setitem__,
                check_cancelled=ledger.check_cancelled,
                ledger=ledger,
                may_start_round=lambda iteration: not guard.active or guard.llm_round(
                    frame, iteration, record.original_prompt),
            )
        except JobCancelled:
            return None
        except BudgetExhausted as error:
            enhanced, enhancement = fallback(NoteKind.ENHANCEMENT_BUDGET,
                                             "enhancement skipped (budget): original prompt, single image", error)
        except RateLimitDeadline as error:  # queued past openai_rate_limit_max_wait_s: the last resort
            log.warning("enhancement rate limited for %s/%s: %s", job.id, frame, error)
            enhanced, enhancement = fallback(NoteKind.ENHANCEMENT_RATE_LIMITED,
                                             "enhancement failed (rate limited): original prompt, single image", error)
        except Exception as error:  # any failure of the LLM stage takes the seeds' fallback
            log.warning("enhancement failed for %s/%s: %s; using the original prompt", job.id, frame, error)
            enhanced, enhancement = fallback(NoteKind.ENHANCEMENT_FAILED,
                                             "enhancement failed: original prompt, single image", error)
        else:  # outside the fallbacks: a failing read here re-drives the step, which replays the rounds
            open_now = ledger.still_open()
            enhanced = result.final_prompt
            enhancement = Enhancement(iterations=len(result.rounds), final_score=result.final_score)
    # Traces go to the store in one go. A closed job gets none; one closed while they were being
    # written loses them again (below), since its cleanup (finalize) may have run before they landed.
    traces_written = bool(traces) and (open_now if open_now is not None else not job.closed())
    if traces_written:
        for name, text in traces.items():
            store.put(trace_key(job.id, frame, name), text.encode(), "text/plain")

    def drop_traces_if_closed() -> None:  # closed as the transition's own read saw it, or read now
        if traces_written and job.frames.closed_after_transition():
            for name in traces:
                store.delete_prefix(trace_key(job.id, frame, name))

    if ledger is not None:  # calls that failed: each recorded reply counted its own call
        ledger.count_the_rest()

    def store_enhancement(current: FrameRecord) -> None:
        current.enhanced_prompt, current.enhancement = enhanced, enhancement
        current.timings.enhance = (started, time.time())
        if enhancement.note is not None:
            current.add_note(enhancement.note.kind, enhancement.note.text)

    # A late copy, or one that a regenerate overtook with a new prompt, is refused here.
    seconds = {} if enhancement.skipped else metrics.observation("frame_stage_seconds", time.time() - started,
                                                                 stage="enhance")
    try:
        job.frames.transition(frame, FrameState.READY, store_enhancement, expect=lambda current: (
            current.state, current.original_prompt, current.revision) == (FrameState.WAITING, record.original_prompt,
                                                                           record.revision), measured=seconds,
            read_after=(frame,),  # for the dispatch that follows (entry.py), which may start this frame
            then=job.progress.prompt_enhanced_call(spec.kind, len(spec.plan.frames)))
    except StaleWrite:
        drop_traces_if_closed()
        raise
    drop_traces_if_closed()
    return enhancement
