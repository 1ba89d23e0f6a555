"""Artifact keys: deterministic in (job, frame, revision, prompt source, variation), so a redelivered task
overwrites its own output instead of duplicating it, and a later revision never overwrites an
earlier one (revision 0 keeps the original layout)."""

from __future__ import annotations

import hashlib
import re

from framefleet.tasks.job.states import PromptSource


def _revision_dir(revision: int) -> str:
    return f"r{revision}/" if revision else ""


def variation_key(job_id: str, frame: str, source: str, index: int, revision: int = 0) -> str:
    name = f"v{index}.png" if source == PromptSource.ENHANCED else f"original_v{index}.png"
    return f"jobs/{job_id}/variations/{frame}/{_revision_dir(revision)}{name}"


def revision_of(variation: str) -> int:
    """The revision a variation key (or a ledger key built from one) belongs to."""
    found = re.search(r"/r(\d+)/", variation)
    return int(found.group(1)) if found else 0


def variation_seed(job_id: str, frame: str, source: str, index: int, attempt: int, revision: int = 0) -> int:
    """Different per variation (so 4 candidates are not copies), the same on redelivery."""
    name = f"{job_id}/{frame}/{source}/{index}/{attempt}" + (f"/r{revision}" if revision else "")
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % 2**31


def thumbnail_key(variation: str) -> str:
    """A variation's contact-sheet thumbnail: ``jobs/{job}/thumbnails/`` + the variation's path
    below ``jobs/{job}/variations/``."""
    root, job_id, kind, path = (variation.split("/", 3) + ["", "", ""])[:4]
    if root != "jobs" or kind != "variations" or not path:
        raise ValueError(f"not a variation key: {variation!r}")
    return f"jobs/{job_id}/thumbnails/{path}"


def frame_key(job_id: str, frame: str, revision: int = 0) -> str:
    return f"jobs/{job_id}/frames/{frame}.png" if not revision else f"jobs/{job_id}/frames/{frame}.r{revision}.png"


def manifest_key(job_id: str) -> str:
    return f"jobs/{job_id}/manifest.json"


def reference_key(job_id: str) -> str:
    return f"jobs/{job_id}/inputs/reference.png"


def trace_key(job_id: str, frame: str, name: str) -> str:
    return f"traces/{job_id}/{frame}/{name}"


# The seeds' trace file names, under traces/{job}/{frame}/.
ORIGINAL_PROMPT_TRACE = "00_original_prompt.txt"
FINAL_PROMPT_TRACE = "final_enhanced_prompt.txt"
SUMMARY_TRACE = "prompt_trace_summary.json"
GENERATION_TRACE = "generation_trace.json"


def agent1_trace_name(iteration: int) -> str:
    return f"{2 * iteration - 1:02d}_agent1_iteration_{iteration}.txt"


def agent2_trace_name(iteration: int) -> str:
    return f"{2 * iteration:02d}_agent2_iteration_{iteration}.txt"
