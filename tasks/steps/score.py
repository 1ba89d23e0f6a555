"""Score one round of a frame (gpu queue; the chord body's first link).

Every generated candidate of the round is scored in one batch by the process's scorer (models
loaded once per process), against the prompt the round generated from; a metric that fails is
left out and its weight goes to the others (a note). While the scorer runs, each candidate's
contact-sheet thumbnail is written from the images just decoded, so the sheet, drawn at finalize
on the job's critical path, need not decode every candidate again. A scoring failure is the
seeds' fallback (the first generated image, unranked), recorded in the result for selection.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, wait

from framefleet.config.settings import get_settings
from framefleet.scoring import METRICS, MetricScores, contributions, overall_score
from framefleet.tasks.artifacts.images import candidate_thumbnail, decode_image
from framefleet.tasks.artifacts.keys import thumbnail_key
from framefleet.tasks.artifacts.store import fleet_store, in_background, read_in_parallel
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.records import Scores, VariationRecord
from framefleet.tasks.runtime.bootstrap import process_scorer
from framefleet.tasks.steps.generate import prompt_for
from PIL import Image

log = logging.getLogger(__name__)

THUMBNAIL_WAIT_S = 2.0  # scoring's wait for its contact-sheet thumbnails, beyond the scorer's own time


def score_round(job: Job, frame: str, revision: int, source: str, variations: list[VariationRecord]) -> dict:
    """The round's scoring result (stored: a second copy returns it): the variations with their
    scores, the scorer's name, an error when scoring failed, notes of failed metrics, timing."""
    spec, record = job.spec, job.frames.get(frame)
    started = time.time()
    scorer, error, notes = None, None, []
    if any(v.key for v in variations):
        try:
            scorer, notes = score_frame(prompt_for(record, source), variations, record.inputs,
                                        spec.config.score_weights.model_dump(), spec.aspect_ratio)
        except Exception as exc:  # the seeds' fallback: first generated image, unranked
            log.warning("scoring failed for %s/%s: %s", job.id, frame, exc)
            error = str(exc)
    result = {"variations": [v.model_dump(mode="json") for v in variations], "scorer": scorer, "error": error,
              "notes": notes, "timing": [started, time.time()]}
    job.rounds.save_scored(frame, revision, source, result)
    return result


def score_frame(prompt: str, variations: list[VariationRecord], input_keys: list[str],
                weights: dict, aspect_ratio: str) -> tuple[str, list[str]]:
    """Score every generated variation of a frame in one batch; fills ``scores`` in place.

    Returns the scorer's name and a note per metric that failed (its weight went to the others).
    """
    store = fleet_store()
    generated = [v for v in variations if v.key]
    if "scoring" in get_settings().inject_faults:
        raise RuntimeError("injected fault: scoring")
    scorer = process_scorer()
    keys = [v.key for v in generated] + (input_keys if scorer.scores_consistency else [])
    images = read_in_parallel(lambda key: decode_image(store.get(key)), keys)

    def store_thumbnail(candidate: tuple[VariationRecord, Image.Image]) -> None:
        variation, image = candidate
        store.put(thumbnail_key(variation.key), candidate_thumbnail(image, aspect_ratio), "image/png")

    thumbnails = in_background(store_thumbnail, zip(generated, images[:len(generated)], strict=True))
    try:
        metrics: list[MetricScores] = scorer.score(prompt, images[:len(generated)], images[len(generated):])
    finally:
        record_thumbnails(generated, thumbnails)
    notes: dict[str, str] = {}
    for variation, m in zip(generated, metrics, strict=True):
        variation.scores = Scores(pickscore=m.pickscore, clip_score=m.clip_score, aesthetic=m.aesthetic, hps=m.hps,
                                  overall=overall_score(m, weights), consistency=m.consistency,
                                  contributions=contributions(m, weights))
        notes.update(m.errors)
    for metric in METRICS:  # weighted, but this worker's scorer does not compute it (e.g. HPS not loaded)
        if weights.get(metric, 0) > 0 and metric not in notes and all(getattr(m, metric) is None for m in metrics):
            notes[metric] = f"not computed by the {scorer.name} scorer on this worker"
    return scorer.name, [f"{metric} failed ({why}); overall re-weighted over the other metrics"
                         for metric, why in sorted(notes.items())]


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
