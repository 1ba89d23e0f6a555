"""Job requests as the main app sends them (JSON), validated with pydantic."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from framefleet.config.settings import MAX_VARIATIONS, ScoreWeights, Settings, get_settings

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
ASPECT_RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9")
_KEY_PART = re.compile(r"^[A-Za-z0-9._-]+$")



def _limits(info: ValidationInfo) -> Settings:
    """Limits come from the settings passed as validation context (the fleet's by default)."""
    return (info.context or {}).get("settings") or get_settings()


def _check_prompt_length(prompt: str, info: ValidationInfo) -> str:
    limit = _limits(info).max_prompt_chars
    if len(prompt) > limit:
        raise ValueError(f"prompt has {len(prompt)} characters, the limit is {limit}")
    return prompt


Prompt = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1), AfterValidator(_check_prompt_length)
]
JobId = Annotated[str, StringConstraints(pattern=JOB_ID_PATTERN)]


def check_artifact_key(key: str) -> str:
    """Keys are relative, '/'-separated, and never climb out of the store root."""
    parts = key.split("/")
    if key.startswith("/") or any(not p or p in (".", "..") or not _KEY_PART.match(p) for p in parts):
        raise ValueError(f"not a valid artifact key: {key!r}")
    return key



def check_reference_source(source: str) -> str:
    """An artifact-store key or an http(s) URL; nothing else (no file://, no paths)."""
    if source.startswith(("http://", "https://")):
        return source
    if "://" in source:
        raise ValueError("only artifact-store keys or http(s) URLs are accepted")
    return check_artifact_key(source)


ReferenceSource = Annotated[str, StringConstraints(max_length=2048), AfterValidator(check_reference_source)]


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


class JobOverrides(BaseModel):
    """Per-job overrides of the pipeline settings; unset fields take the fleet's settings."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    num_variations: int | None = Field(None, ge=1, le=MAX_VARIATIONS)
    max_enhancement_iterations: int | None = Field(None, ge=1, le=10)
    score_threshold: float | None = Field(None, ge=0, le=100)
    convergence_epsilon: float | None = Field(None, ge=0)
    quality_threshold: float | None = Field(None, ge=0, le=100)
    score_weights: ScoreWeights | None = None
    keep_traces: bool | None = None
    enhance: bool | None = Field(None, description="false: generate from the original prompt, no LLM rounds")
    image_model: str | None = Field(None, description="Replicate model; must have an adapter")
    max_usd: float | None = Field(None, gt=0, description="spending cap; the job degrades rather than exceed it")

    @field_validator("image_model")
    @classmethod
    def _known_image_model(cls, name: str | None) -> str | None:
        from framefleet.tasks.providers.adapters import image_model_registry

        if name is not None and name not in image_model_registry():
            raise ValueError(f"no adapter for {name!r} (have {sorted(image_model_registry())})")
        return name


class JobConfig(BaseModel):
    """The effective pipeline settings of one job: fleet settings with the job's overrides applied."""

    num_variations: int
    max_enhancement_iterations: int
    score_threshold: float
    convergence_epsilon: float
    quality_threshold: float
    score_weights: ScoreWeights
    keep_traces: bool
    image_model: str
    enhance: bool = True
    max_usd: float | None = None

    @classmethod
    def resolve(cls, settings: Settings, overrides: JobOverrides) -> "JobConfig":
        fields = {name: getattr(settings, name) for name in cls.model_fields if name not in ("image_model", "max_usd")}
        fields["image_model"] = settings.replicate_model
        fields.update(overrides.model_dump(exclude_none=True))
        return cls.model_validate(fields)


TaskName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$")]
QueueName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,200}$")]


class Callback(BaseModel):
    """The main app's task, sent by name at the end of every revision (no import of framefleet)."""

    model_config = ConfigDict(extra="forbid")

    task: TaskName
    queue: QueueName


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)

    job_id: JobId = Field(default_factory=new_job_id)
    aspect_ratio: Literal[ASPECT_RATIOS] = "16:9"  # type: ignore[valid-type]
    overrides: JobOverrides = JobOverrides()
    callback: Callback | None = None


def _check_frame_count(frames: int, field: str, info: ValidationInfo) -> None:
    limit = _limits(info).max_frames
    if frames > limit:
        raise ValueError(f"{field}: the job would have {frames} frames, the limit is {limit}")


class Clip(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start_prompt: Prompt
    end_prompt: Prompt


class StoryboardRequest(_Request):
    kind: Literal["storyboard"] = "storyboard"
    clips: list[Clip] = Field(min_length=1)
    reference_image: ReferenceSource | None = None

    @model_validator(mode="after")
    def _limit_frames(self, info: ValidationInfo) -> "StoryboardRequest":
        _check_frame_count(2 * len(self.clips), "clips", info)
        return self


class ReferenceImagesRequest(_Request):
    kind: Literal["references"] = "references"
    scene_prompts: list[Prompt] = Field(min_length=1)
    consistency_markers: dict[str, str] = {}
    continuity_notes: list[str] = Field(default_factory=list, description="continuity_notes[i] belongs to scene i+1")
    consistency_guidelines: list[str] = []
    transition_notes: list[str] = Field(
        default_factory=list, description="transition_notes[i] describes the cut from scene i+1 into scene i+2"
    )
    initial_reference_image: ReferenceSource | None = None


    @model_validator(mode="after")
    def _check_notes(self, info: ValidationInfo) -> "ReferenceImagesRequest":
        scenes = len(self.scene_prompts)
        _check_frame_count(scenes, "scene_prompts", info)
        if len(self.continuity_notes) > scenes:
            raise ValueError(f"continuity_notes: {len(self.continuity_notes)} notes for {scenes} scenes")
        if len(self.transition_notes) > max(scenes - 1, 0):
            raise ValueError(f"transition_notes: {len(self.transition_notes)} notes for {scenes - 1} transitions")
        return self


class FrameOverrides(BaseModel):
    """What a regenerate may change for one frame."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    num_variations: int | None = Field(None, ge=1, le=MAX_VARIATIONS)
    max_enhancement_iterations: int | None = Field(None, ge=1, le=10)
    score_threshold: float | None = Field(None, ge=0, le=100)
    quality_threshold: float | None = Field(None, ge=0, le=100)
    enhance: bool | None = None
    image_model: str | None = None

    _known_image_model = field_validator("image_model")(JobOverrides._known_image_model.__func__)


class RegenerateOptions(BaseModel):
    """``framefleet.frames.regenerate`` options."""

    model_config = ConfigDict(extra="forbid")

    prompt: Prompt | None = Field(None, description="a new original prompt, enhanced again")
    overrides: FrameOverrides = FrameOverrides()
    cascade: bool = Field(True, description="re-chain the frames that depend on this one")


JobRequest = StoryboardRequest | ReferenceImagesRequest
REFERENCE_FIELDS = {"storyboard": "reference_image", "references": "initial_reference_image"}
REQUEST_MODELS: dict[str, type[_Request]] = {"storyboard": StoryboardRequest, "references": ReferenceImagesRequest}


class RequestError(ValueError):
    """A request that cannot run; the message names every offending field."""


def describe_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "request"
        parts.append(f"{field}: {item['msg']}")
    return "; ".join(parts)


def parse_request(kind: str, payload: str | bytes | dict, settings: Settings | None = None) -> JobRequest:
    """Validate a request given as JSON text or as an already-decoded JSON object."""
    model = REQUEST_MODELS.get(kind)
    if model is None:
        raise RequestError(f"kind: unknown job kind {kind!r}, expected one of {sorted(REQUEST_MODELS)}")
    context = {"settings": settings or get_settings()}
    try:
        if isinstance(payload, (str, bytes)):
            return model.model_validate_json(payload, context=context)
        if not isinstance(payload, dict):
            raise RequestError(f"request: expected a JSON object, got {type(payload).__name__}")
        return model.model_validate(payload, context=context)
    except ValidationError as error:
        raise RequestError(describe_validation_error(error)) from None
