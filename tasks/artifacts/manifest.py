"""The job manifest (the schema is tasks/job/records.py), its cost estimate and contact sheet."""

from __future__ import annotations

import logging

from framefleet.tasks.artifacts.contact_sheet import render_contact_html, render_contact_sheet
from framefleet.tasks.artifacts.images import decode_image
from framefleet.tasks.job.ledgers import TOTAL
from framefleet.tasks.job.records import Cost, FrameRecord, JobTimings, Manifest
from framefleet.tasks.job.spec import JobSpec

log = logging.getLogger(__name__)


def estimate_cost(spec: JobSpec, counters: dict[str, dict[str, int]], settings) -> Cost:
    total = counters.get(TOTAL, {})
    usd = 0.0
    if spec.providers.get("llm") == "openai":
        usd += settings.tokens_usd(total.get("prompt_tokens", 0), total.get("completion_tokens", 0))
    if spec.providers.get("judge") == "openai":
        usd += settings.judge_tokens_usd(total.get("judge_prompt_tokens", 0), total.get("judge_completion_tokens", 0))
    if spec.providers.get("images") == "replicate":
        usd += total.get("predictions_created", 0) * settings.prediction_usd(spec.config.image_model)
    return Cost(frames={k: v for k, v in counters.items() if k != TOTAL}, total=total,
                estimated_usd=round(usd, 6))


def build_manifest(spec: JobSpec, frames: dict[str, FrameRecord], finished: float,
                   cost: Cost | None = None, cancelled: bool = False) -> Manifest:
    ordered = [frames[f.name] for f in spec.plan.frames]
    succeeded = [f for f in ordered if f.status == "succeeded"]
    status = "succeeded" if len(succeeded) == len(ordered) else ("partial" if succeeded else "failed")
    if cancelled:
        status = "cancelled"
    return Manifest(
        job_id=spec.job_id, kind=spec.kind, status=status,
        scorer=", ".join(sorted({f.scorer for f in ordered if f.scorer})) or "none",
        providers=spec.providers, config=spec.config.model_dump(mode="json"),
        failed_clips=sorted({f.clip for f in ordered if f.status in ("failed", "skipped") and f.clip is not None}),
        warnings=[f"{f.name}: {w}" for f in ordered for w in f.warnings + f.fallbacks],
        timings=JobTimings(submitted=spec.submitted, finished=finished),
        frames=ordered,
        cost=cost or Cost(),
    )


def write_contact_sheet(store, spec: JobSpec, manifest: Manifest) -> dict[str, str]:
    """The job's contact sheet (PNG and HTML) next to its frames; a failure here is only logged."""
    prefix = f"jobs/{spec.job_id}/"
    keys = {"png": prefix + "contact_sheet.png", "html": prefix + "contact_sheet.html"}
    try:
        png = render_contact_sheet(manifest, spec.aspect_ratio, lambda key: decode_image(store.get(key)))
        store.put(keys["png"], png, "image/png")
        page = render_contact_html(manifest, lambda key: key.removeprefix(prefix))
        store.put(keys["html"], page.encode(), "text/html")
    except Exception:  # the frames and manifest matter more than the picture of them
        log.exception("contact sheet for %s failed", spec.job_id)
        return {}
    return keys
