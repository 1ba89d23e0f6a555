"""Overall score and ranking of a frame's variations."""

from __future__ import annotations

from collections.abc import Mapping

from framefleet.scoring.types import METRICS, MetricScores
from pydantic import BaseModel


def metric_values(scores: MetricScores) -> dict[str, float]:
    """The 0-100 metrics that exist; consistency counts as 100 · mean(max(cos, 0))."""
    values = {m: getattr(scores, m) for m in METRICS if getattr(scores, m) is not None}
    if scores.consistency:
        values["consistency"] = 100.0 * sum(max(c, 0.0) for c in scores.consistency) / len(scores.consistency)
    return values


def _shares(scores: MetricScores, weights: Mapping[str, float]) -> dict[str, float]:
    present = {m: v for m, v in metric_values(scores).items() if weights.get(m, 0) > 0}
    total = sum(weights[m] for m in present)
    return {m: weights[m] * value / total for m, value in present.items()} if total > 0 else {}


def contributions(scores: MetricScores, weights: Mapping[str, float]) -> dict[str, float]:
    """What each metric adds to the overall score: its share of the weights times its value (they
    add up to the overall). A failed metric adds nothing: its weight went to the others."""
    return {m: round(part, 3) for m, part in _shares(scores, weights).items()}


def overall_score(scores: MetricScores, weights: Mapping[str, float]) -> float | None:
    """Weighted mean of the metrics that exist; a failed metric's weight goes to the others."""
    parts = _shares(scores, weights)
    return round(sum(parts.values()), 3) if parts else None


class Ranked(BaseModel):
    index: int
    overall: float
    pickscore: float | None = None


def rank_images_by_quality(candidates: list[Ranked]) -> list[Ranked]:
    """Best first: by overall, ties broken by PickScore, then by the lower variation index."""
    return sorted(candidates, key=lambda c: (-c.overall, -(c.pickscore if c.pickscore is not None else -1), c.index))
