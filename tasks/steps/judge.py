"""Settle a close call with the vision judge (llm queue; between scoring and selection, only in
the chains of jobs whose config has ``judge: vlm``).

When the round's two best overall scores are within the job's ``judge_margin``, the judge compares
those two candidates given the frame's prompt, the reference image and the previous frame. It is
asked in both orders (A/B, then B/A) to cancel position bias: the candidate both answers prefer
is the winner, and selection takes it; when the answers disagree, or see no difference, the score
order stands. The result is the scoring result with the verdict added (small JSON), stored, so a
second copy returns it; each answer is kept in the job's LLM ledger as soon as it is paid for, so
a re-driven copy asks only what is missing. Both calls are reserved by the budget guard together
and counted in the cost ledger (``judge_calls``, ``judge_prompt_tokens``, ...). Any failure of the
judge (an error, a timeout, the budget) keeps the score order and is a note on the frame.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor

from framefleet.config.settings import get_settings
from framefleet.scoring import Ranked, rank_images_by_quality
from framefleet.tasks.artifacts.images import decode_image, downsized_jpeg
from framefleet.tasks.artifacts.keys import reference_key
from framefleet.tasks.artifacts.store import fleet_store, read_in_parallel
from framefleet.tasks.coordination.budget import BudgetGuard
from framefleet.tasks.coordination.leases import Stored
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.records import JudgeRecord, JudgeVerdict, VariationRecord
from framefleet.tasks.job.states import Note, NoteKind
from framefleet.tasks.providers import frame_judge
from framefleet.tasks.providers.judges import FrameJudge, JudgeImage, JudgeReply, JudgeRequest
from framefleet.tasks.steps.generate import prompt_for

log = logging.getLogger(__name__)

# OpenAI reads a "low" detail image at 512 px: a larger one would only cost bytes.
JUDGE_IMAGE_SIDE = 512
REASON_CHARS = 500  # a reason kept in the manifest, at most


class JudgeSkipped(Exception):
    """The spending cap cannot pay for both judge calls."""


def judged(job: Job, frame: str, revision: int, source: str) -> Stored[dict]:
    """The round's judged result once it is stored (the step's outcome)."""
    return Stored(job.rounds.outcome_read("judged", frame, revision, source),
                  lambda raw: json.loads(raw) if raw else None)


def judge_round(job: Job, frame: str, revision: int, source: str, scored: dict) -> dict:
    """The round's scoring result with ``judge`` (a JudgeRecord, or None when the scores were not a
    close call) and ``judge_note`` (the fallback taken, if any) added; stored."""
    record, note = settle(job, frame, revision, source, scored)
    result = {**scored, "judge": record.model_dump(mode="json") if record else None,
              "judge_note": note.model_dump(mode="json") if note else None}
    job.rounds.save_judged(frame, revision, source, result)
    return result


def close_call(scored: dict, margin: float) -> tuple[VariationRecord, VariationRecord, float] | None:
    """The two best-scored candidates, in score order, and their gap, when it is within ``margin``."""
    if scored.get("error"):
        return None
    candidates = {v.index: v for v in (VariationRecord.model_validate(r) for r in scored["variations"])
                  if v.key and v.scores is not None and v.scores.overall is not None}
    if len(candidates) < 2:
        return None
    ranked = rank_images_by_quality([Ranked(index=v.index, overall=v.scores.overall, pickscore=v.scores.pickscore)
                                     for v in candidates.values()])
    first, second = candidates[ranked[0].index], candidates[ranked[1].index]
    gap = first.scores.overall - second.scores.overall
    return (first, second, round(gap, 3)) if gap <= margin else None


def settle(job: Job, frame: str, revision: int, source: str, scored: dict) -> tuple[JudgeRecord | None, Note | None]:
    spec, record = job.spec, job.frames.get(frame)
    pair = close_call(scored, spec.frame_config(record).judge_margin)
    if pair is None or job.cancelled():
        return None, None
    first, second, gap = pair
    provider = spec.providers.get("judge", "offline")
    judge = frame_judge(get_settings(), provider, f"{job.id}/{frame}")
    verdict = JudgeRecord(provider=provider, model=judge.model, candidates=[first.index, second.index], gap=gap,
                          selected=first.index, reason="")
    prompt = prompt_for(record, source)
    try:
        replies = ask_both_orders(job, frame, f"judge/{revision}/{source}/{first.index},{second.index}", judge,
                                  prompt, record.inputs, (first, second))
    except JudgeSkipped as skipped:
        verdict.reason, verdict.error = "no judge (budget): the score order stands", str(skipped)
        return verdict, Note(kind=NoteKind.JUDGE_BUDGET, text=f"vision judge skipped (budget): score order, "
                                                              f"v{first.index} kept")
    except Exception as error:  # any failure of the judge: the score order stands
        log.warning("judge failed for %s/%s: %s", job.id, frame, error)
        verdict.reason, verdict.error = "the judge failed: the score order stands", str(error)[:REASON_CHARS]
        return verdict, Note(kind=NoteKind.JUDGE_FAILED, text=f"vision judge failed: score order, v{first.index} "
                                                              f"kept ({str(error)[:200]})")
    finally:
        if spent := {counter: value for counter, value in judge.usage.items() if value}:
            usd = 0.0
            if job.spec.providers.get("judge") == "openai":
                usd = get_settings().judge_tokens_usd(spent.get("judge_prompt_tokens", 0),
                                                      spent.get("judge_completion_tokens", 0))
            job.ledger.add_costs(frame, usd, **spent)
    return combine(verdict, replies, (first.index, second.index)), None


def ask_both_orders(job: Job, frame: str, pair: str, judge: FrameJudge, prompt: str, inputs: list[str],
                    candidates: tuple[VariationRecord, VariationRecord]) -> list[JudgeReply]:
    """The judge's answers for (first, second) and (second, first), asked at once; an answer in the
    ledger is not asked again, and those still to ask are reserved together first."""
    paid = job.ledger.llm_replies(frame, pair, 2, ("judge",))
    stored = [paid.get((order, "judge")) for order in (1, 2)]
    missing = [order for order, reply in zip((1, 2), stored) if reply is None]
    if not missing:
        return [JudgeReply.model_validate_json(reply) for reply in stored]
    guard = BudgetGuard(job, job.spec)
    if not guard.judge_calls(frame, len(missing), prompt, len(inputs) + 2):
        raise JudgeSkipped("budget: the job's max_usd cannot pay for the judge's two answers")
    store = fleet_store()
    images = read_in_parallel(lambda key: downsized_jpeg(decode_image(store.get(key)), JUDGE_IMAGE_SIDE),
                              [candidates[0].key, candidates[1].key, *inputs])
    labelled = [JudgeImage(label="reference image" if key == reference_key(job.id) else "previous frame", jpeg=image)
                for key, image in zip(inputs, images[2:], strict=True)]
    shown = {1: (images[0], images[1]), 2: (images[1], images[0])}

    def ask(order: int) -> JudgeReply:
        if stored[order - 1] is not None:
            return JudgeReply.model_validate_json(stored[order - 1])
        a, b = shown[order]
        reply = judge.compare(JudgeRequest(prompt=prompt, inputs=labelled, first=a, second=b))
        job.ledger.save_llm_reply(frame, pair, order, "judge", reply.model_dump_json())
        return reply

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="judge") as pool:
        return list(pool.map(ask, (1, 2)))


def combine(verdict: JudgeRecord, replies: list[JudgeReply], indices: tuple[int, int]) -> JudgeRecord:
    """Both orders' verdicts, and the winner when both prefer the same candidate."""
    first, second = indices
    for shown, reply in zip(((first, second), (second, first)), replies, strict=True):
        named = {"A": shown[0], "B": shown[1], "tie": None}
        verdict.verdicts.append(JudgeVerdict(
            shown=list(shown), preferred=named[reply.preferred], continuity=named[reply.continuity],
            prompt_adherence=named[reply.prompt_adherence], defects=named[reply.defects],
            reason=reply.reason[:REASON_CHARS]))
    preferred = [v.preferred for v in verdict.verdicts]
    if preferred[0] is not None and preferred[0] == preferred[1]:
        verdict.winner = verdict.selected = preferred[0]
        verdict.agreed_with_scores = preferred[0] == first
        verdict.reason = verdict.verdicts[0].reason
    elif preferred[0] is None and preferred[1] is None:
        verdict.reason = "the judge saw no difference in either order: the score order stands"
    else:
        names = ["a tie" if p is None else f"v{p}" for p in preferred]
        verdict.reason = (f"the two orders disagreed (v{first} shown first: {names[0]}; v{second} shown first: "
                          f"{names[1]}): the score order stands")
    return verdict
