"""Job requests as the main app sends them (JSON), validated with pydantic."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection
from typing import Annotated, Literal

from framefleet.config.settings import MAX_VARIATIONS, ScoreWeights, Settings, get_settings
from framefleet.tasks.job.errors import RequestError
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

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
ASPECT_RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9")
_KEY_PART = re.compile(r"^[A-Za-z0-9._-]+$")

# Fixed limits of a references request's consistency context (in the published JSON Schema).
# Every one of these texts is woven into every scene's prompt, which must stay within
# max_prompt_chars as a whole (checked once woven); these keep each part and the count sane.
MAX_MARKERS = 32
MAX_MARKER_KEY_CHARS = 64
MAX_MARKER_VALUE_CHARS = 1000
MAX_GUIDELINES = 32
MAX_GUIDELINE_CHARS = 1000
MAX_NOTE_CHARS = 2000  # one continuity or transition note


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
MarkerKey = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_MARKER_KEY_CHARS)]
MarkerValue = Annotated[str, StringConstraints(max_length=MAX_MARKER_VALUE_CHARS)]
Guideline = Annotated[str, StringConstraints(max_length=MAX_GUIDELINE_CHARS)]
Note = Annotated[str, StringConstraints(max_length=MAX_NOTE_CHARS)]


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
    # Bounded: a refusal names the model it was given.
    image_model: str | None = Field(None, max_length=200, description="Replicate model; must have an adapter")
    max_usd: float | None = Field(None, gt=0, description="spending cap; the job degrades rather than exceed it")
    judge: Literal["off", "vlm"] | None = Field(None, description="vlm: a vision model settles close calls")
    judge_margin: float | None = Field(None, ge=0, le=100, description="overall points within which the judge runs")

    @field_validator("image_model")
    @classmethod
    def _known_image_model(cls, name: str | None, info: ValidationInfo) -> str | None:
        # The models with an adapter (providers/image_models.json), given as validation context by
        # whoever parses a request or options (parse_request, parse_options).
        known = (info.context or {}).get("image_models")
        if name is not None and known is not None and name not in known:
            raise ValueError(f"no adapter for {name!r} (have {sorted(known)})")
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
    judge: Literal["off", "vlm"] = "off"
    judge_margin: float = 5.0

    @classmethod
    def resolve(cls, settings: Settings, overrides: JobOverrides) -> "JobConfig":
        fields = {name: getattr(settings, name) for name in cls.model_fields if name not in ("image_model", "max_usd")}
        fields["image_model"] = settings.replicate_model
        fields.update(overrides.model_dump(exclude_none=True))
        return cls.model_validate(fields)


# A dotted Python name; a queue name that cannot be a Redis key of the fleet's (no ':').
TaskName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
                                            max_length=200)]
QueueName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)]
# kombu's own Redis keys beside the queues: a callback pushed there would corrupt the broker.
KOMBU_KEYS = ("unacked", "unacked_index", "unacked_mutex")


class Callback(BaseModel):
    """The main app's task, sent by name at the end of every revision (no import of framefleet).

    It must be the main app's own task on the main app's own queue: a fleet task or queue would
    make the fleet run its own code with the callback's payload."""

    model_config = ConfigDict(extra="forbid")

    task: TaskName
    queue: QueueName

    @field_validator("task")
    @classmethod
    def _not_the_fleets_task(cls, task: str) -> str:
        if task.split(".")[0].lower() in ("framefleet", "celery"):
            raise ValueError(f"{task!r} is a fleet or Celery task; name a task of the main app")
        return task

    @field_validator("queue")
    @classmethod
    def _not_the_fleets_queue(cls, queue: str) -> str:
        from framefleet.config.celery import QUEUES

        if queue in QUEUES or queue in KOMBU_KEYS or queue.lower().startswith(("framefleet", "_kombu")):
            raise ValueError(f"{queue!r} is a queue or key of the fleet's broker; name a queue of the main app")
        return queue


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
    consistency_markers: dict[MarkerKey, MarkerValue] = Field(default_factory=dict, max_length=MAX_MARKERS)
    continuity_notes: list[Note] = Field(default_factory=list, description="continuity_notes[i] belongs to scene i+1")
    consistency_guidelines: list[Guideline] = Field(default_factory=list, max_length=MAX_GUIDELINES)
    transition_notes: list[Note] = Field(
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
        self._check_woven_prompts(_limits(info).max_prompt_chars)
        return self

    def _check_woven_prompts(self, limit: int) -> None:
        """What a scene is generated from is its prompt woven with the consistency context: that
        text, not the scene prompt alone, must stay within max_prompt_chars."""
        from framefleet.tasks.job.plan import weave_scene_prompt, woven_parts  # plan imports this module

        over = []
        for index in range(len(self.scene_prompts)):
            woven = len(weave_scene_prompt(self, index))
            if woven > limit:
                over.append(f"scene_prompts.{index}: the prompt woven with {', '.join(woven_parts(self, index))} "
                            f"has {woven} characters, the limit is {limit}")
        if over:
            raise ValueError("; ".join(over))


class FrameOverrides(BaseModel):
    """What a regenerate may change for one frame."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    num_variations: int | None = Field(None, ge=1, le=MAX_VARIATIONS)
    max_enhancement_iterations: int | None = Field(None, ge=1, le=10)
    score_threshold: float | None = Field(None, ge=0, le=100)
    quality_threshold: float | None = Field(None, ge=0, le=100)
    enhance: bool | None = None
    image_model: str | None = Field(None, max_length=200)

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


_NAMES_ITS_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*: ")


def _short(text: str, most: int = 80) -> str:
    return text if len(text) <= most else text[:most] + f"…({len(text)} characters)"


def describe_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        # A location holds dict keys as given: a long one is cut, so a refusal stays short.
        field = ".".join(_short(str(p)) for p in item["loc"]) or "request"
        message = item["msg"].removeprefix("Value error, ")
        # A check of the whole request (frame counts, woven prompts) names its own field.
        parts.append(message if not item["loc"] and _NAMES_ITS_FIELD.match(message) else f"{field}: {message}")
    return "; ".join(parts)


def _count_limits(kind: str, payload: dict, settings: Settings) -> None:
    """The counts of a request's collections, before any item of them is looked at."""
    frames = settings.max_frames
    # Only a collection of the right type is counted here; a wrong type is refused by the validation.
    counts = {name: len(value) for name, value in payload.items()
              if isinstance(value, dict if name == "consistency_markers" else list)}
    if kind == "storyboard" and 2 * counts.get("clips", 0) > frames:
        raise RequestError(f"clips: the job would have {2 * counts['clips']} frames, the limit is {frames}")
    if kind != "references":
        return
    if counts.get("scene_prompts", 0) > frames:
        raise RequestError(f"scene_prompts: the job would have {counts['scene_prompts']} frames, the limit is {frames}")
    for field, most, what in (("continuity_notes", frames, f"notes, a job has at most {frames} scenes"),
                              ("transition_notes", frames, f"notes, a job has at most {frames} scenes"),
                              ("consistency_markers", MAX_MARKERS, f"markers, the limit is {MAX_MARKERS}"),
                              ("consistency_guidelines", MAX_GUIDELINES, f"guidelines, the limit is {MAX_GUIDELINES}")):
        if counts.get(field, 0) > most:
            raise RequestError(f"{field}: {counts[field]} {what}")


def _scalar_size(value) -> int:
    """The least characters a JSON scalar takes, found without writing it (a huge int is not printed)."""
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, int) and not isinstance(value, bool):
        return (max(value.bit_length(), 1) - 1) * 3 // 10 + 1  # digits of at least 2 ** (bits - 1)
    return 3  # 0.0, true, null, ... (anything else is refused by the validation)


def _size_limit(payload: dict, limit: int) -> None:
    """Add up the request's size as compact JSON, depth first in document order, and stop at the
    field that takes it past ``limit``. The sum never exceeds the real size, so a request that fits
    is never refused; containers are walked through iterators, never copied, and every item adds
    at least one character, so this takes at most ``limit`` steps however big the request."""
    total = 1
    stack = [("", iter(payload.items()))]
    while stack:
        prefix, items = stack[-1]
        entry = next(items, None)
        if entry is None:
            stack.pop()
            continue
        key, value = entry
        path = f"{prefix}{_short(str(key))}"
        total += (len(key) + 3 if isinstance(key, str) else 0) + 1  # "key": and a comma or the closing bracket
        if isinstance(value, dict):
            total += 1
            stack.append((path + ".", iter(value.items())))
        elif isinstance(value, (list, tuple)):
            total += 1
            stack.append((path + ".", enumerate(value)))
        else:
            total += _scalar_size(value)
        if total > limit:
            raise RequestError(f"{path}: the request passes the limit of {limit} characters as JSON at this "
                               f"field (max_request_bytes)")


def precheck_request(kind: str, payload, settings: Settings | None = None) -> None:
    """Refuse an oversized request cheaply, before it is validated or anything is built from it.

    JSON text: its length against ``max_request_bytes``, then it is checked as the object it
    decodes to. An object: the counts of its collections (clips, scenes, notes, markers,
    guidelines), then its size as JSON, added up field by field and stopped at the first field
    past ``max_request_bytes`` (so the check costs at most the limit, not the request). Raises
    RequestError naming the field; what passes is validated in full by ``parse_request``.
    """
    settings = settings or get_settings()
    limit = settings.max_request_bytes
    if isinstance(payload, (str, bytes, bytearray)):
        if len(payload) > limit:
            unit = "characters" if isinstance(payload, str) else "bytes"
            raise RequestError(f"request: the JSON text has {len(payload)} {unit}, the limit is {limit} "
                               f"(max_request_bytes)")
        try:  # at most the limit to decode: then its counts are checked like an object's
            payload = json.loads(payload)
        except (ValueError, RecursionError):
            return  # the validation reports what is wrong with the JSON, in its own words
    if not isinstance(payload, dict):
        return  # parse_request refuses it, naming the type
    _count_limits(kind, payload, settings)
    _size_limit(payload, limit)


def parse_request(kind: str, payload: str | bytes | dict, settings: Settings | None = None,
                  image_models: Collection[str] | None = None) -> JobRequest:
    """Validate a request given as JSON text or as an already-decoded JSON object; ``image_models``
    are the models an ``overrides.image_model`` may name.

    An oversized request is refused by ``precheck_request`` before any of it is validated.
    """
    model = REQUEST_MODELS.get(kind)
    if model is None:
        raise RequestError(f"kind: unknown job kind {kind!r}, expected one of {sorted(REQUEST_MODELS)}")
    settings = settings or get_settings()
    precheck_request(kind, payload, settings)
    context = {"settings": settings, "image_models": image_models}
    try:
        if isinstance(payload, (str, bytes)):
            return model.model_validate_json(payload, context=context)
        if not isinstance(payload, dict):
            raise RequestError(f"request: expected a JSON object, got {type(payload).__name__}")
        return model.model_validate(payload, context=context)
    except ValidationError as error:
        raise RequestError(describe_validation_error(error)) from None
