"""`framefleet eval`: does enhanced best-of-4 beat the previous approach? Jobs per arm, one re-scorer, a report.

Arms (request overrides; chaining kept in all): ``baseline`` (original prompt, one image, no
ranking), ``enhanced`` (the full pipeline as the fleet is configured), ``enhance-only`` and
``best-of-4`` (one ingredient each); and the selection, one change at a time: ``scores-only`` (the
seeds' three metrics), ``continuity`` (+ consistency with the inputs), ``judge`` (+ the vision judge).
Writes ``summary.json``, ``frames.json`` (one row per frame and arm) and ``report.html`` with its
plots under ``--out``.
"""

from __future__ import annotations

from framefleet.config.settings import ScoreWeights

# The selection arms set their weights explicitly, so the fleet's own settings do not blur them.
SEEDS_WEIGHTS = ScoreWeights(consistency=0).model_dump()
CONTINUITY_WEIGHTS = ScoreWeights().model_dump()

# Request overrides per arm; chaining is the same in every arm.
ARMS: dict[str, dict] = {
    "baseline": {"enhance": False, "num_variations": 1},  # the previous approach
    "enhanced": {},  # the full pipeline: enhanced prompt, 4 variations, ranked
    "enhance-only": {"num_variations": 1},
    "best-of-4": {"enhance": False, "num_variations": 4},
    "scores-only": {"score_weights": SEEDS_WEIGHTS, "judge": "off"},
    "continuity": {"score_weights": CONTINUITY_WEIGHTS, "judge": "off"},
    "judge": {"score_weights": CONTINUITY_WEIGHTS, "judge": "vlm"},
}
BASELINE = "baseline"
QUALITY_METRICS = ("pickscore", "clip_score", "aesthetic", "overall")
