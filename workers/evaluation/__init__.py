"""`framefleet eval`: does enhanced best-of-4 beat the previous approach? Jobs per arm, one re-scorer, a report.

Arms (request overrides; chaining kept in all): ``baseline`` (original prompt, one image, no
ranking), ``enhanced`` (the full pipeline), ``enhance-only`` and ``best-of-4`` (one ingredient each).
Writes ``summary.json``, ``frames.json`` (one row per frame and arm) and ``report.html`` with its
plots under ``--out``.
"""

from __future__ import annotations

# Request overrides per arm; chaining is the same in every arm.
ARMS: dict[str, dict] = {
    "baseline": {"enhance": False, "num_variations": 1},  # the previous approach
    "enhanced": {},  # the full pipeline: enhanced prompt, 4 variations, ranked
    "enhance-only": {"num_variations": 1},
    "best-of-4": {"enhance": False, "num_variations": 4},
}
BASELINE = "baseline"
QUALITY_METRICS = ("pickscore", "clip_score", "aesthetic", "overall")
