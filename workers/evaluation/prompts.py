"""Prompt sets for the evaluation: storyboards (JSONL) and single-frame prompt lists (TSV or text).

- ``*.jsonl``: one storyboard request per line (``clips``, optional ``aspect_ratio``,
  ``reference_image``, ``overrides``), plus an optional ``name`` the harness keeps for the report.
- ``*.tsv``: a tab-separated table with a ``Prompt`` column (PartiPrompts' format); other columns
  are ignored.
- anything else: plain text, one prompt a line; blank lines and ``#`` comments are skipped.

A single prompt becomes a one-scene reference-images job (``scene_prompts: [prompt]``): one frame,
the same enhancement, variations and selection as a storyboard frame, no clip structure.
Every request is checked with the fleet's own request models before any job is submitted.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from framefleet.tasks.job.requests import RequestError, parse_request

SINGLE_PROMPT_ASPECT_RATIO = "1:1"  # text-to-image benchmarks are square


def shipped_storyboards() -> Path:
    """The storyboard set that ships with framefleet (``make eval`` runs it)."""
    return Path(str(files("framefleet.workers") / "eval_data" / "storyboards.jsonl"))


@dataclass(frozen=True)
class PromptItem:
    set_name: str
    name: str
    kind: str  # "storyboard" | "references"
    request: dict  # without job_id; the harness gives every run its own


def load_prompt_set(path: Path, limit: int | None = None) -> list[PromptItem]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise RequestError(f"prompts: cannot read {path} ({error.strerror})") from None
    set_name = path.stem
    if path.suffix == ".jsonl":
        items = _storyboards(path, text, set_name)
    elif path.suffix == ".tsv":
        items = _single_prompts(set_name, _tsv_prompts(path, text))
    else:
        lines = (line.strip() for line in text.splitlines())
        items = _single_prompts(set_name, [line for line in lines if line and not line.startswith("#")])
    items = items[:limit] if limit else items
    if not items:
        raise RequestError(f"prompts: {path} holds no prompts")
    return items


def _storyboards(path: Path, text: str, set_name: str) -> list[PromptItem]:
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError as error:
            raise RequestError(f"prompts: {path}:{number} is not JSON ({error.msg})") from None
        if not isinstance(request, dict):
            raise RequestError(f"prompts: {path}:{number} is not a JSON object")
        name = str(request.pop("name", f"{set_name}-{number:03d}"))
        request.pop("job_id", None)
        _check(path, number, "storyboard", request)
        items.append(PromptItem(set_name, name, "storyboard", request))
    return items


def _tsv_prompts(path: Path, text: str) -> list[str]:
    reader = csv.DictReader(text.splitlines(), delimiter="\t")
    if "Prompt" not in (reader.fieldnames or []):
        raise RequestError(f"prompts: {path} has no Prompt column (columns: {reader.fieldnames})")
    return [row["Prompt"].strip() for row in reader if (row["Prompt"] or "").strip()]


def _single_prompts(set_name: str, prompts: list[str]) -> list[PromptItem]:
    items = []
    for number, prompt in enumerate(prompts, start=1):
        request = {"aspect_ratio": SINGLE_PROMPT_ASPECT_RATIO, "scene_prompts": [prompt]}
        _check(Path(set_name), number, "references", request)
        items.append(PromptItem(set_name, f"{set_name}-{number:03d}", "references", request))
    return items


def _check(path: Path, number: int, kind: str, request: dict) -> None:
    try:
        parse_request(kind, {**request, "job_id": "check"})
    except RequestError as error:
        raise RequestError(f"prompts: {path} item {number}: {error}") from None
