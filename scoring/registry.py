"""Scorers by name, behind one factory (the way open_clip names its models)."""

from __future__ import annotations

import importlib
from typing import Callable

from framefleet.scoring.heuristic import HeuristicScorer
from framefleet.scoring.types import Scorer


def _model_scorer(**options) -> Scorer:
    # Imported on demand: torch is only installed on gpu workers (the `scoring` extra).
    return importlib.import_module("framefleet.scoring.models").ModelScorer(**options)


SCORERS: dict[str, Callable[..., Scorer]] = {
    "heuristic": HeuristicScorer,
    "models": _model_scorer,
}


def create_scorer(name: str, **options) -> Scorer:
    """Build and set up (load) a scorer; call once per worker process."""
    if name not in SCORERS:
        raise ValueError(f"scorer: unknown scorer {name!r} (have {sorted(SCORERS)})")
    scorer = SCORERS[name](**options)
    scorer.setup()
    return scorer
