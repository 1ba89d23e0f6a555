"""Scorers by name, behind one factory (the way open_clip names its models)."""

from __future__ import annotations

from typing import Callable

from scoring.heuristic import HeuristicScorer
from scoring.types import Scorer

SCORERS: dict[str, Callable[..., Scorer]] = {
    "heuristic": HeuristicScorer,
}


def create_scorer(name: str, **options) -> Scorer:
    """Build and set up (load) a scorer; call once per worker process."""
    if name not in SCORERS:
        raise ValueError(f"scorer: unknown scorer {name!r} (have {sorted(SCORERS)})")
    scorer = SCORERS[name](**options)
    scorer.setup()
    return scorer
