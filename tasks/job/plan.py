"""Compile a request into an ordered frame plan and resolve each frame's input images.

Chaining rules (DESIGN.md):
- reference images: scene 1 ← the initial reference image; scene N ← scene N-1's selection.
- storyboard: clip 1 start ← reference; clip N start ← reference + clip N-1 end;
  clip N end ← reference + clip N start.
A missing reference is simply absent. When the chained frame has no selection (it failed), the
last earlier frame with a selection stands in, else the reference.
"""

from __future__ import annotations

from framefleet.tasks.job.requests import JobRequest, ReferenceImagesRequest, StoryboardRequest
from pydantic import BaseModel


class PlannedFrame(BaseModel):
    name: str
    prompt: str
    clip: int | None = None
    use_reference: bool = False
    chain_from: str | None = None


class FramePlan(BaseModel):
    kind: str
    reference_image: str | None
    frames: list[PlannedFrame]

    def index_of(self, name: str) -> int:
        return next(i for i, f in enumerate(self.frames) if f.name == name)

    def frame(self, name: str) -> PlannedFrame:
        return self.frames[self.index_of(name)]

    def after(self, name: str) -> str | None:
        """The frame planned after ``name`` (None after the last)."""
        index = self.index_of(name) + 1
        return self.frames[index].name if index < len(self.frames) else None


def _context(request: ReferenceImagesRequest, scene_index: int) -> list[tuple[str, str]]:
    """(field, text) of each part of the consistency context woven into a scene's prompt."""
    parts = []
    if request.consistency_markers:
        markers = "; ".join(f"{k}: {v}" for k, v in request.consistency_markers.items())
        parts.append(("consistency_markers", f"Consistency markers: {markers}."))
    if scene_index < len(request.continuity_notes) and request.continuity_notes[scene_index].strip():
        parts.append((f"continuity_notes.{scene_index}",
                      f"Continuity: {request.continuity_notes[scene_index].strip()}"))
    guidelines = [g.strip() for g in request.consistency_guidelines if g.strip()]
    if guidelines:
        parts.append(("consistency_guidelines", "Guidelines: " + "; ".join(guidelines)))
    if 0 < scene_index <= len(request.transition_notes) and request.transition_notes[scene_index - 1].strip():
        parts.append((f"transition_notes.{scene_index - 1}",
                      f"Transition from the previous scene: {request.transition_notes[scene_index - 1].strip()}"))
    return parts


def weave_scene_prompt(request: ReferenceImagesRequest, scene_index: int) -> str:
    """Scene prompt plus the consistency context that keeps scenes coherent."""
    return "\n".join([request.scene_prompts[scene_index], *(text for _, text in _context(request, scene_index))])


def woven_parts(request: ReferenceImagesRequest, scene_index: int) -> list[str]:
    """The request fields woven into a scene's prompt (for a refusal that names them)."""
    return [field for field, _ in _context(request, scene_index)]


def build_frame_plan(request: JobRequest) -> FramePlan:
    if isinstance(request, StoryboardRequest):
        frames: list[PlannedFrame] = []
        for number, clip in enumerate(request.clips, start=1):
            start, end = f"clip_{number:03d}_start", f"clip_{number:03d}_end"
            previous_end = f"clip_{number - 1:03d}_end" if number > 1 else None
            frames.append(PlannedFrame(name=start, prompt=clip.start_prompt, clip=number,
                                       use_reference=True, chain_from=previous_end))
            frames.append(PlannedFrame(name=end, prompt=clip.end_prompt, clip=number,
                                       use_reference=True, chain_from=start))
        return FramePlan(kind="storyboard", reference_image=request.reference_image, frames=frames)
    frames = [
        PlannedFrame(
            name=f"scene_{number:03d}",
            prompt=weave_scene_prompt(request, number - 1),
            use_reference=number == 1,
            chain_from=f"scene_{number - 1:03d}" if number > 1 else None,
        )
        for number in range(1, len(request.scene_prompts) + 1)
    ]
    return FramePlan(kind="references", reference_image=request.initial_reference_image, frames=frames)


def resolve_inputs(plan: FramePlan, frame: PlannedFrame, selections: dict[str, str]) -> list[str]:
    """Artifact keys of a frame's input images, given the selections stored so far."""
    inputs: list[str] = []
    if frame.use_reference and plan.reference_image:
        inputs.append(plan.reference_image)
    if frame.chain_from is not None:
        earlier = [f.name for f in plan.frames[: plan.index_of(frame.chain_from) + 1]]
        chained = next((selections[name] for name in reversed(earlier) if name in selections), None)
        if chained is None:
            chained = plan.reference_image
        if chained is not None and chained not in inputs:
            inputs.append(chained)
    return inputs
