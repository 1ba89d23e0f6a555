"""Select a frame's candidate from one scored round (control queue; the chord body's last link).

Rank 1 of the scored candidates is copied to the frame's own key (a copy inside the store) and
recorded; where the vision judge settled a close call (steps/judge.py), its winner takes rank 1;
the seeds' fallbacks when scoring or ranking failed (the first generated, the first
scored image); below the quality threshold a warning, the image kept. A round with no image at
all sends the frame to one image with the original prompt (RETRY), or, when that was the round,
fails the frame. The transition checks this is still the frame's round: a late copy writes nothing.
"""

from __future__ import annotations

import logging
import time

from framefleet.config.settings import get_settings
from framefleet.scoring import Ranked, rank_images_by_quality
from framefleet.tasks.artifacts.keys import GENERATION_TRACE, frame_key, trace_key
from framefleet.tasks.artifacts.store import fleet_store
from framefleet.tasks.coordination.leases import Stored
from framefleet.tasks.job import metrics
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.records import FrameRecord, JudgeRecord, Selection, VariationRecord
from framefleet.tasks.job.redis import ScriptCall
from framefleet.tasks.job.states import FrameState, Note, NoteKind, PromptSource

log = logging.getLogger(__name__)


def in_round(record: FrameRecord, revision: int, source: str) -> bool:
    """Whether the frame still waits for this round's outcome (else it is stored, or moved on)."""
    return record.state is FrameState.GENERATING and record.round == source and record.revision == revision


def selected(job: Job, frame: str, revision: int, source: str) -> Stored[bool]:
    """True once the round's selection is stored (or the frame moved on without it)."""
    return Stored(job.frames.read_command(frame),
                  lambda reply: None if in_round(job.frames.parse(frame, reply), revision, source) else True)


def select_round(job: Job, frame: str, source: str, revision: int, scored: dict, before: FrameRecord,
                 reported: ScriptCall | None = None) -> FrameRecord:
    """Store the frame's selection (or failure) for this round (``before``: the frame's record as
    read); StaleWrite if it is settled. ``reported``: the status write chained after the
    selection's."""
    spec, store, started = job.spec, fleet_store(), time.time()
    threshold = spec.frame_config(before).quality_threshold
    variations = [VariationRecord.model_validate(v) for v in scored["variations"]]
    notes = [Note(kind=NoteKind.VARIATION_FAILED, text=f"variation {v.index} failed: {v.error}")
             for v in variations if v.error]
    chosen = best_variation(variations, scored["error"], notes) if any(v.key for v in variations) else None
    judge = JudgeRecord.model_validate(scored["judge"]) if scored.get("judge") else None
    if judge is not None and chosen is not None:
        chosen = follow_judge(variations, chosen, judge)
    if scored.get("judge_note"):
        notes.append(Note.model_validate(scored["judge_note"]))
    selected_key = frame_key(job.id, frame, revision)
    if chosen is not None:
        store.copy(chosen.key, selected_key, "image/png")
    outcome = (FrameState.SUCCEEDED if chosen is not None
               else FrameState.RETRY if source == PromptSource.ENHANCED else FrameState.FAILED)

    def store_selection(record: FrameRecord) -> None:
        record.variations = [v for v in record.variations if v.prompt_source != source] + variations
        record.timings.variations += [v.timing for v in variations if v.timing]
        record.timings.score = tuple(scored["timing"]) if scored.get("timing") else None
        record.scorer = scored["scorer"] or record.scorer
        record.judge = judge
        for text in scored.get("notes", []):
            record.add_note(NoteKind.METRIC_FAILED, text)
        for note in notes:
            record.add_note(note.kind, note.text)
        if outcome is FrameState.RETRY:
            record.add_note(NoteKind.RETRY_ORIGINAL, "generation failed: one image with the original prompt")
        elif outcome is FrameState.FAILED:
            record.add_note(NoteKind.GENERATION_FAILED, "generation failed: frame failed")
        else:
            overall = chosen.scores.overall if chosen.scores else None
            record.selected = Selection(index=chosen.index, key=chosen.key, frame_key=selected_key, overall=overall)
            if overall is not None and overall < threshold:
                record.add_note(NoteKind.QUALITY_LOW, f"quality {overall:.1f} is below the threshold {threshold:.1f}")

    # The dispatch that follows (entry.py) starts this frame's retry, or most often the next frame.
    starts = frame if outcome is FrameState.RETRY else spec.plan.after(frame)
    record = job.frames.transition(frame, outcome, store_selection,
                                   expect=lambda current: in_round(current, revision, source),
                                   measured=stage_seconds(before, variations, scored, started),
                                   read_after=(starts,) if starts else (), then=reported)
    if record.state is FrameState.FAILED:
        log.error("frame %s/%s failed: no image could be generated", job.id, frame)
    elif record.selected is not None:
        if record.has_note(NoteKind.QUALITY_LOW):
            log.warning("%s/%s: quality %s is below the threshold %s; keeping the image", job.id, frame,
                        record.selected.overall, threshold)
        log.info("%s/%s selected v%s (overall %s)", job.id, frame, record.selected.index, record.selected.overall)
    for note in notes:
        log.warning("%s/%s: %s", job.id, frame, note.text)
    if not job.frames.closed_after_transition():
        store.put(trace_key(job.id, frame, GENERATION_TRACE), record.model_dump_json(indent=2).encode(),
                  "application/json")
    return record


def follow_judge(variations: list[VariationRecord], chosen: VariationRecord, judge: JudgeRecord) -> VariationRecord:
    """The judge's selection, when it judged the candidates the score order put first and second:
    it takes rank 1 (the manifest's rank 1 is the selected candidate), the score's first rank 2. A
    round whose ranking failed (no ranks) keeps its fallback."""
    if chosen.rank != 1 or chosen.index != judge.candidates[0] or judge.selected == chosen.index:
        return chosen
    winner = next(v for v in variations if v.index == judge.selected)
    winner.rank, chosen.rank = chosen.rank, winner.rank
    log.info("judge chose v%s over v%s (overall %s against %s): %s", winner.index, chosen.index,
             winner.scores.overall if winner.scores else None, chosen.scores.overall if chosen.scores else None,
             judge.reason)
    return winner


def stage_seconds(record: FrameRecord, variations: list[VariationRecord], scored: dict,
                  started: float) -> metrics.Increments:
    """The round's stage seconds for the fleet's metrics: generate (enqueued until its last
    variation ended, queue wait included), score, and this selection."""
    parts = [metrics.observation("frame_stage_seconds", time.time() - started, stage="select")]
    ended = [v.timing[1] for v in variations if v.timing]
    if ended and record.timings.enqueued:
        parts.append(metrics.observation("frame_stage_seconds", max(ended) - record.timings.enqueued,
                                         stage="generate"))
    if scored.get("timing"):
        parts.append(metrics.observation("frame_stage_seconds", scored["timing"][1] - scored["timing"][0],
                                         stage="score"))
    return metrics.merged(*parts)


def best_variation(variations: list[VariationRecord], scoring_error: str | None, notes: list[Note]) -> VariationRecord:
    """Rank 1 of the scored variations; the seeds' fallbacks when scoring or ranking failed."""
    generated = [v for v in variations if v.key]
    if scoring_error is not None:
        notes.append(Note(kind=NoteKind.SCORING_FAILED, text="scoring failed: first generated image, unranked"))
        return generated[0]
    scored = [v for v in generated if v.scores is not None and v.scores.overall is not None]
    try:
        if "ranking" in get_settings().inject_faults:
            raise RuntimeError("injected fault: ranking")
        ranked = rank_images_by_quality(
            [Ranked(index=v.index, overall=v.scores.overall, pickscore=v.scores.pickscore) for v in scored])
    except Exception as error:
        log.warning("ranking failed: %s", error)
        notes.append(Note(kind=NoteKind.RANKING_FAILED, text="ranking failed: first scored image"))
        return (scored or generated)[0]
    if not ranked:
        notes.append(Note(kind=NoteKind.RANKING_FAILED, text="ranking failed: no overall score, first generated image"))
        return generated[0]
    by_index = {v.index: v for v in scored}
    for rank, candidate in enumerate(ranked, start=1):
        by_index[candidate.index].rank = rank
    return by_index[ranked[0].index]
