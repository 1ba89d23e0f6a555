"""Run prompt sets through the fleet once per arm, then re-score every arm's final frames.

The harness is a client: it submits jobs by task name, follows their status records and reads
manifests and images from the store. The re-scoring runs here, with one scorer for all arms, one
batch per frame (that frame's final image under every arm), against the frame's original prompt:
the enhanced arms chose their frames with scores against their own enhanced prompts, so reusing
those would favour them.
"""

from __future__ import annotations

import io
import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from celery import Celery
from framefleet.scoring import MetricScores, Scorer, overall_score
from framefleet.scoring.similarity import cosine, image_embeddings
from framefleet.tasks.artifacts.store import ArtifactStore
from framefleet.tasks.job.requests import new_job_id
from framefleet.workers.client import cancel_job, job_status, submit_job
from framefleet.workers.evaluation import ARMS, QUALITY_METRICS
from framefleet.workers.evaluation.prompts import PromptItem
from PIL import Image


@dataclass
class JobRun:
    item: PromptItem
    arm: str
    repeat: int
    job_id: str
    manifest: dict | None = None
    error: str | None = None
    frames: list[dict] = field(default_factory=list)


def plan_runs(items: list[PromptItem], arms: list[str], repeats: int) -> list[JobRun]:
    """Arms interleaved item by item, so a slow spell of the fleet hits every arm alike."""
    return [JobRun(item, arm, repeat, new_job_id()) for repeat in range(1, repeats + 1) for item in items
            for arm in arms]


def job_request(run: JobRun) -> dict:
    request = json.loads(json.dumps(run.item.request))  # a deep copy: items are shared by arms
    request["job_id"] = run.job_id
    request["overrides"] = {**request.get("overrides", {}), **ARMS[run.arm]}
    return request


def run_jobs(app: Celery, store: ArtifactStore, runs: list[JobRun], parallel: int, job_timeout_s: float,
             on_done: Callable[[JobRun], None] = lambda run: None, poll_s: float = 0.2) -> None:
    """Keep up to ``parallel`` jobs in flight; fill each run's manifest (or its error)."""
    waiting = list(reversed(runs))
    running: dict[str, tuple[JobRun, float]] = {}
    while waiting or running:
        while waiting and len(running) < parallel:
            run = waiting.pop()
            try:
                submit_job(app, run.item.kind, job_request(run))
            except Exception as error:  # a refused request is a result of this run, not the end of all
                run.error = f"not submitted: {error}"
                on_done(run)
                continue
            running[run.job_id] = (run, time.monotonic())
        for job_id, (run, started) in list(running.items()):
            status = job_status(job_id)
            if status.state == "done":
                run.manifest = json.loads(store.get(status.manifest_key or f"jobs/{job_id}/manifest.json"))
            elif time.monotonic() - started > job_timeout_s:
                cancel_job(app, job_id)
                run.error = f"not done after {job_timeout_s:.0f}s; cancelled"
            else:
                continue
            del running[job_id]
            on_done(run)
        time.sleep(poll_s)


def _image(store: ArtifactStore, key: str) -> Image.Image:
    return Image.open(io.BytesIO(store.get(key))).convert("RGB")


def _span(span) -> float | None:
    return span[1] - span[0] if span else None


def frame_rows(run: JobRun) -> list[dict]:
    """One row per planned frame of a finished job: what the manifest says (before re-scoring)."""
    manifest = run.manifest or {}
    rows = []
    for frame in manifest.get("frames", []):
        timings, selected = frame["timings"], frame["selected"]
        spans = timings.get("variations") or []
        threshold = manifest["config"]["quality_threshold"]
        selection_overall = selected["overall"] if selected else None
        counters = manifest["cost"]["frames"].get(frame["name"], {})
        rows.append({
            "set": run.item.set_name, "item": run.item.name, "repeat": run.repeat, "arm": run.arm,
            "job_id": run.job_id, "frame": frame["name"], "clip": frame["clip"], "status": frame["status"],
            "prompt": frame["original_prompt"], "enhanced_prompt": frame["enhanced_prompt"],
            "image_key": selected["frame_key"] if selected else None, "inputs": frame["inputs"],
            "selection_scorer": frame["scorer"], "selection_overall": selection_overall,
            "quality_threshold": threshold,
            "threshold_warned": any("below the threshold" in w for w in frame["warnings"]),
            "latency_s": {
                "enhancement": None if frame["enhancement"]["skipped"] else _span(timings.get("enhance")),
                "generation": max(e for _, e in spans) - min(s for s, _ in spans) if spans else None,
                "scoring": _span(timings.get("score")),
            },
            "images": counters.get("images_stored", 0),
            "llm_tokens": counters.get("prompt_tokens", 0) + counters.get("completion_tokens", 0),
            "judge": frame.get("judge"),
            "judge_calls": counters.get("judge_calls", 0),
            "judge_tokens": counters.get("judge_prompt_tokens", 0) + counters.get("judge_completion_tokens", 0),
        })
    return rows


def add_consistency(store: ArtifactStore, scorer: Scorer, run: JobRun) -> None:
    """Image-image cosines within a chained job (one embedding batch per job).

    ``previous``: each frame with the frame before it in its clip (a storyboard clip's end with its
    start) or, in a reference-images job, with the previous scene. ``reference``: each frame with
    the job's reference image, or with its first frame where the request gave none.
    """
    frames = [row for row in run.frames if row["image_key"]]
    for row in run.frames:
        row["consistency"] = {"previous": None, "reference": None}
    if not frames:
        return
    first = run.frames[0]
    reference_key = first["inputs"][0] if first["inputs"] else first["image_key"]
    if reference_key is None:
        return
    keys = [reference_key] + [row["image_key"] for row in frames]
    embeddings = image_embeddings(scorer, [_image(store, key) for key in keys])
    by_key = {key: embeddings[i] for i, key in enumerate(keys)}
    previous: dict | None = None
    for row in frames:
        chained = previous is not None and (run.item.kind == "references" or previous["clip"] == row["clip"])
        if chained:
            row["consistency"]["previous"] = cosine(by_key[row["image_key"]], by_key[previous["image_key"]])
        if row["image_key"] != reference_key:
            row["consistency"]["reference"] = cosine(by_key[row["image_key"]], by_key[reference_key])
        previous = row


def rescore(store: ArtifactStore, scorer: Scorer, runs: list[JobRun], weights: dict[str, float]) -> list[dict]:
    """Score every arm's final frames again: one scorer, one batch per frame, the original prompt."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        for row in run.frames:
            row["scores"] = dict.fromkeys(QUALITY_METRICS)
            row["rescore_batch"] = None
            if row["image_key"]:
                groups[(row["set"], row["item"], row["repeat"], row["frame"])].append(row)
    for batch, rows in enumerate(groups.values()):
        results: list[MetricScores] = scorer.score(rows[0]["prompt"], [_image(store, r["image_key"]) for r in rows])
        for row, scores in zip(rows, results, strict=True):
            row["scores"] = {**{m: getattr(scores, m) for m in QUALITY_METRICS[:-1]},
                             "overall": overall_score(scores, weights)}
            row["rescore_batch"] = batch
    return [row for run in runs for row in run.frames]
