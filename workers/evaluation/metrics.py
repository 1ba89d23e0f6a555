"""The numbers of the evaluation: means with 95% bootstrap intervals, paired win rates, counts."""

from __future__ import annotations

from collections import Counter

import numpy as np
from framefleet.workers.evaluation import BASELINE, QUALITY_METRICS
from framefleet.workers.evaluation.runner import JobRun

RESAMPLES = 2000
STAGES = ("enhancement", "generation", "scoring")


def mean_ci(values, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Mean and percentile-bootstrap 95% interval of the values that exist (None is left out)."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if x.size == 0:
        return {"n": 0, "mean": None, "ci95": None}
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"n": int(x.size), "mean": float(x.mean()), "ci95": [float(low), float(high)]}


def frame_key(row: dict) -> tuple:
    return row["set"], row["item"], row["repeat"], row["frame"]


def paired_outcomes(rows: list[dict], arm: str) -> list[float]:
    """Per frame that both arms produced: 1 if ``arm`` scores higher overall than baseline, ½ on a tie."""
    baseline = {frame_key(r): r["scores"]["overall"] for r in rows if r["arm"] == BASELINE}
    outcomes = []
    for row in rows:
        theirs, ours = baseline.get(frame_key(row)), row["scores"]["overall"]
        if row["arm"] == arm and theirs is not None and ours is not None:
            outcomes.append(1.0 if ours > theirs else 0.5 if ours == theirs else 0.0)
    return outcomes


def job_latency(run: JobRun) -> dict[str, float | None]:
    """Per job: wall time submitted → finished; enhancement runs for all frames at once (its
    extent), generation and scoring run frame after frame (their sums)."""
    manifest = run.manifest or {}
    if not manifest:
        return {"total": None, **dict.fromkeys(STAGES)}
    spans = [f["timings"]["enhance"] for f in manifest["frames"]
             if f["timings"].get("enhance") and not f["enhancement"]["skipped"]]
    timings = manifest["timings"]

    def total(stage: str) -> float | None:
        values = [r["latency_s"][stage] for r in run.frames if r["latency_s"][stage] is not None]
        return sum(values) if values else None

    return {
        "total": timings["finished"] - timings["submitted"] if timings.get("finished") else None,
        "enhancement": max(e for _, e in spans) - min(s for s, _ in spans) if spans else None,
        "generation": total("generation"),
        "scoring": total("scoring"),
    }


def judge_summary(rows: list[dict]) -> dict:
    """What the vision judge did in an arm: frames it judged (a close call), those without a verdict
    (its two orders disagreed, or it saw no difference), and how often a verdict was the score
    order's first (its agreement with the scores)."""
    judged = [r["judge"] for r in rows if r["judge"] is not None]
    answered = [j for j in judged if j["error"] is None]
    decided = [j for j in answered if j["winner"] is not None]
    return {
        "frames_judged": len(judged), "of": len(rows), "failed": len(judged) - len(answered),
        "no_verdict": len(answered) - len(decided),
        "overturned": sum(not j["agreed_with_scores"] for j in decided),
        "agreement_with_scores": mean_ci(1.0 if j["agreed_with_scores"] else 0.0 for j in decided),
    }


def arm_summary(arm: str, runs: list[JobRun], all_rows: list[dict], overrides: dict) -> dict:
    runs = [r for r in runs if r.arm == arm]
    rows = [r for r in all_rows if r["arm"] == arm]
    produced = [r for r in rows if r["image_key"]]
    below = [r for r in produced if r["scores"]["overall"] is not None
             and r["scores"]["overall"] < r["quality_threshold"]]
    selected_below = [r for r in produced if r["selection_overall"] is not None
                      and r["selection_overall"] < r["quality_threshold"]]
    latencies = [job_latency(r) for r in runs]
    usd = [r.manifest["cost"]["estimated_usd"] for r in runs if r.manifest]
    outcomes = paired_outcomes(all_rows, arm)
    return {
        "overrides": overrides,
        "jobs": len(runs),
        "jobs_not_finished": sum(r.manifest is None for r in runs),
        "jobs_by_status": dict(Counter(r.manifest["status"] for r in runs if r.manifest)),
        "job_errors": [f"{r.item.name} (repeat {r.repeat}, job {r.job_id}): {r.error}" for r in runs if r.error],
        "frames": len(rows),
        "frames_with_image": len(produced),
        "metrics": {m: mean_ci(r["scores"][m] for r in produced) for m in QUALITY_METRICS},
        "win_rate_vs_baseline": None if arm == BASELINE else {
            **mean_ci(outcomes), "wins": outcomes.count(1.0), "ties": outcomes.count(0.5),
            "losses": outcomes.count(0.0)},
        "consistency": {kind: mean_ci(r["consistency"][kind] for r in produced)
                        for kind in ("previous", "reference")},
        "judge": judge_summary(rows),
        "below_threshold": {"rescored": len(below), "at_selection": len(selected_below),
                            "at_selection_warned": sum(r["threshold_warned"] for r in selected_below),
                            "of": len(produced)},
        "latency_s": {
            "per_frame": {s: mean_ci(r["latency_s"][s] for r in produced) for s in STAGES},
            "per_job": {s: mean_ci(lat[s] for lat in latencies) for s in ("total", *STAGES)},
        },
        "cost": {  # per planned frame: a frame that failed was paid for too
            "usd_per_job": float(np.mean(usd)) if usd else None,
            "usd_per_frame": sum(usd) / len(rows) if rows else None,
            "images_per_frame": float(np.mean([r["images"] for r in rows])) if rows else None,
            "llm_tokens_per_frame": float(np.mean([r["llm_tokens"] for r in rows])) if rows else None,
            "judge_calls_per_frame": float(np.mean([r["judge_calls"] for r in rows])) if rows else None,
            "judge_tokens_per_frame": float(np.mean([r["judge_tokens"] for r in rows])) if rows else None,
        },
    }


