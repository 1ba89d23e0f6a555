"""Score rounds of frames (gpu queue; the chord body's first link).

Every generated candidate of a round is scored by the process's scorer (models loaded once per
process), against the prompt the round generated from. The score task scores its own round and the
rounds waiting behind it on the gpu queue in one pass (coordination/score_batch.py), each round
getting the scores it would get alone and its own stored outcome. A metric that fails is left out
and its weight goes to the others (a note). While the scorer runs, each candidate's contact-sheet
thumbnail is written from the images just decoded, so the sheet, drawn at finalize on the job's
critical path, need not decode every candidate again. A scoring failure is the seeds' fallback
(the first generated image, unranked), recorded in the result for selection; a round whose images
cannot be read fails alone, not the rounds that share its pass.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future, wait
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

from framefleet.config.settings import get_settings
from framefleet.scoring import METRICS, MetricScores, ScoreGroup, contributions, overall_score
from framefleet.tasks.artifacts.images import candidate_thumbnail, decode_image
from framefleet.tasks.artifacts.keys import thumbnail_key
from framefleet.tasks.artifacts.store import ArtifactStore, fleet_store, in_background, read_in_parallel
from framefleet.tasks.coordination.leases import Stored
from framefleet.tasks.coordination.score_batch import WaitingRound, waiting_rounds
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.records import Scores, VariationRecord
from framefleet.tasks.job.rounds import round_id
from framefleet.tasks.runtime.bootstrap import process_scorer
from framefleet.tasks.steps.generate import prompt_for
from PIL import Image

log = logging.getLogger(__name__)

THUMBNAIL_WAIT_S = 2.0  # scoring's wait for its contact-sheet thumbnails, beyond the scorer's own time


@dataclass
class ScoringRound:
    """One frame's round to score, with what scoring reads of its job."""

    job: Job
    frame: str
    revision: int
    source: str
    variations: list[VariationRecord]
    prompt: str
    input_keys: list[str]
    weights: dict
    aspect_ratio: str

    @property
    def generated(self) -> list[VariationRecord]:
        return [v for v in self.variations if v.key]

    @property
    def name(self) -> str:
        return f"{self.job.id}/{round_id(self.frame, self.revision, self.source)}"

    def save(self, result: dict) -> None:
        self.job.rounds.save_scored(self.frame, self.revision, self.source, result)


class Outcome(NamedTuple):
    scorer: str | None
    error: str | None
    notes: list[str]
    batch: dict | None  # the pass that scored the round: its leader, frames and images


def scored(job: Job, frame: str, revision: int, source: str) -> Stored[dict]:
    """The round's scores once they are stored (the step's outcome)."""
    return Stored(job.rounds.outcome_read("scored", frame, revision, source),
                  lambda raw: json.loads(raw) if raw else None)


def scoring_round(job: Job, frame: str, revision: int, source: str, variations: list[VariationRecord]) -> ScoringRound:
    spec, record = job.spec_and_frame(frame)
    return ScoringRound(job, frame, revision, source, variations, prompt_for(record, source), record.inputs,
                        spec.config.score_weights.model_dump(), spec.aspect_ratio)


def score_with_waiting(job: Job, frame: str, revision: int, source: str, variations: list[VariationRecord]) -> dict:
    """The score task's work: its round and the rounds waiting behind it, up to
    ``score_batch_frames``, in one pass; each round's outcome stored (a second copy returns it)
    before its lease is released. Returns this task's own round's outcome."""
    settings = get_settings()
    own = scoring_round(job, frame, revision, source, variations)
    with waiting_rounds(job.id, frame, revision, source, settings.score_batch_frames - 1,
                        settings.score_batch_wait_ms / 1000) as waiting:
        joined = [(taken, scoring) for taken in waiting if (scoring := join(taken)) is not None]
        results = score_rounds([own, *(scoring for _, scoring in joined)])
        own.save(results[0])
        for (taken, scoring), result in zip(joined, results[1:], strict=True):
            store_waiting(taken, scoring, result)
    return results[0]


def store_waiting(taken: WaitingRound, scoring: ScoringRound, result: dict) -> None:
    """A waiting round's outcome from the pass, stored and its lease released. One the pass failed
    for (an error, a metric that failed) is not stored: its own task scores it alone, perhaps on
    another worker, so a failure of this worker or of this pass's size never becomes another
    frame's outcome. A write that fails leaves that round to the watchdog, not this task's own."""
    try:
        if result["error"] is None and not result["notes"]:
            scoring.save(result)
        taken.lease.release(finished=True)
    except Exception as error:  # noqa: BLE001 — this task's own round is stored: it must return it
        log.warning("%s not stored from this pass: %s", scoring.name, error)
        try:
            taken.lease.release(finished=False)
        except Exception:  # noqa: BLE001 — no longer renewed either: it runs out for the watchdog
            log.warning("lease %s left to run out", taken.lease.key)


def join(taken: WaitingRound) -> ScoringRound | None:
    """A waiting round whose lease the pass took, ready to score; None (its lease given back) when
    its job cannot be read: its own task, still queued, meets the same error and reports it."""
    try:
        return scoring_round(taken.job, taken.frame, taken.revision, taken.source, taken.variations)
    except Exception as error:  # noqa: BLE001 — the pass goes on without that round
        log.warning("%s/%s not scored in this pass: %s", taken.job.id, taken.frame, error)
        taken.lease.release(finished=True)  # nothing was done for it: nothing for the watchdog
        return None


def score_rounds(rounds: list[ScoringRound]) -> list[dict]:
    """Each round's scoring result (the first round leads the pass): the variations with their
    scores, the scorer's name, an error when scoring failed, notes of failed metrics, timing, and
    ``batch``, the pass that scored it (null for a round with no image)."""
    started = time.time()
    scored = [r for r in rounds if r.generated]
    outcomes: dict[int, Outcome] = {}
    if scored:
        try:
            outcomes = score_frames(scored, rounds[0].name)
        except Exception as exc:  # the seeds' fallback: first generated image, unranked
            log.warning("scoring failed for %s: %s", ", ".join(r.name for r in scored), exc)
            outcomes = {id(r): Outcome(None, str(exc), [], None) for r in scored}
    ended = time.time()
    results = []
    for r in rounds:
        outcome = outcomes.get(id(r), Outcome(None, None, [], None))
        results.append({"variations": [v.model_dump(mode="json") for v in r.variations], "scorer": outcome.scorer,
                        "error": outcome.error, "notes": outcome.notes, "timing": [started, ended],
                        "batch": outcome.batch})
    return results


def read_image(store: ArtifactStore, key: str) -> Image.Image | Exception:
    try:
        return decode_image(store.get(key))
    except Exception as error:  # noqa: BLE001 — fails only the round the image belongs to
        return error


def score_frames(rounds: list[ScoringRound], lead: str) -> dict[int, Outcome]:
    """Score every generated variation of the rounds in one pass; fills ``scores`` in place.

    Returns each round's outcome by ``id``: the scorer's name and a note per metric that failed
    (its weight went to the others), or the error that kept its images from being read.
    """
    store = fleet_store()
    if "scoring" in get_settings().inject_faults:
        raise RuntimeError("injected fault: scoring")
    scorer = process_scorer()
    keys = [[v.key for v in r.generated] + (r.input_keys if scorer.scores_consistency else []) for r in rounds]
    decoded = iter(read_in_parallel(partial(read_image, store), [key for own in keys for key in own]))
    outcomes, readable = {}, []
    for r, own in zip(rounds, keys, strict=True):
        images = [next(decoded) for _ in own]
        if failed := next((image for image in images if isinstance(image, Exception)), None):
            log.warning("scoring failed for %s: %s", r.name, failed)
            outcomes[id(r)] = Outcome(None, str(failed), [], None)
        else:
            readable.append((r, images))

    def store_thumbnail(candidate: tuple[VariationRecord, Image.Image, str]) -> None:
        variation, image, aspect_ratio = candidate
        store.put(thumbnail_key(variation.key), candidate_thumbnail(image, aspect_ratio), "image/png")

    candidates = [(v, image, r.aspect_ratio) for r, images in readable
                  for v, image in zip(r.generated, images[:len(r.generated)], strict=True)]
    thumbnails = in_background(store_thumbnail, candidates)
    try:
        metrics = scorer.score_groups([ScoreGroup(r.prompt, images[:len(r.generated)], images[len(r.generated):])
                                       for r, images in readable]) if readable else []
    finally:
        record_thumbnails([v for v, _, _ in candidates], thumbnails)
    batch = {"lead": lead, "frames": len(readable), "images": len(candidates)}
    if len(readable) > 1:
        log.info("scored %d frames (%d images) in one pass, led by %s", len(readable), len(candidates), lead)
    for (r, _), scores in zip(readable, metrics, strict=True):
        outcomes[id(r)] = Outcome(scorer.name, None, record_scores(r, scores, scorer.name), batch)
    return outcomes


def record_scores(scoring: ScoringRound, metrics: list[MetricScores], scorer: str) -> list[str]:
    """Fill each generated variation's ``scores``; a note per metric that failed."""
    notes: dict[str, str] = {}
    for variation, m in zip(scoring.generated, metrics, strict=True):
        variation.scores = Scores(pickscore=m.pickscore, clip_score=m.clip_score, aesthetic=m.aesthetic, hps=m.hps,
                                  overall=overall_score(m, scoring.weights), consistency=m.consistency,
                                  contributions=contributions(m, scoring.weights))
        notes.update(m.errors)
    for metric in METRICS:  # weighted, but this worker's scorer does not compute it (e.g. HPS not loaded)
        if scoring.weights.get(metric, 0) > 0 and metric not in notes and all(getattr(m, metric) is None
                                                                             for m in metrics):
            notes[metric] = f"not computed by the {scorer} scorer on this worker"
    return [f"{metric} failed ({why}); overall re-weighted over the other metrics" for metric, why in sorted(notes.items())]


def record_thumbnails(generated: list[VariationRecord], writes: list[Future]) -> None:
    """Name in each record the thumbnail its write stored; the sheet decodes the full image of
    the others. Waited for at most THUMBNAIL_WAIT_S, so a hung store holds no round up."""
    wait(writes, timeout=THUMBNAIL_WAIT_S)
    for variation, written in zip(generated, writes, strict=True):
        if not written.done():
            log.warning("contact-sheet thumbnail of %s not written in %s s", variation.key, THUMBNAIL_WAIT_S)
        elif error := written.exception():
            log.warning("no contact-sheet thumbnail of %s: %s", variation.key, error)
        else:
            variation.thumbnail_key = thumbnail_key(variation.key)
