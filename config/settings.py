"""One settings class for the whole fleet (env prefix ``FRAMEFLEET_``)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from framefleet.scoring.weights import DEFAULT_SOURCES, ModelSources
from pydantic import AliasChoices, BaseModel, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MAX_VARIATIONS = 8  # per frame round, in settings and in a request's overrides


# A Replicate model or deployment name, "owner/name".
REPLICATE_NAME = r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$"


def is_sentinel_url(url: str | None) -> bool:
    """A ``sentinel://HOST:PORT;sentinel://HOST:PORT;...`` URL (kombu's and Celery's form)."""
    return bool(url) and url.lower().startswith("sentinel://")


class ScoreWeights(BaseModel):
    """Weights of the overall score. PickScore leads the seeds' three metrics: it predicts human
    preference best of them. Consistency with the frame's input images (reference, previous frame)
    counts by default: a third of the overall, so a candidate far less consistent than its siblings
    cannot win on looks alone (docs/scoring.md, "Continuity"). HPSv2.1 is off unless weighted."""

    # Infinity/NaN would be stored as null and make the job unreadable: refuse them here.
    model_config = {"extra": "forbid", "allow_inf_nan": False}

    pickscore: float = Field(0.5, ge=0)
    clip_score: float = Field(0.25, ge=0)
    aesthetic: float = Field(0.25, ge=0)
    # Similarity to the frame's input images; 0 = recorded in the manifest only.
    consistency: float = Field(0.5, ge=0)
    # > 0 in the fleet's settings: gpu workers load HPSv2.1 (scoring/models.py).
    hps: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _not_all_zero(self) -> "ScoreWeights":
        if self.pickscore + self.clip_score + self.aesthetic + self.hps <= 0:
            # Consistency alone cannot rank a frame without input images (the first one).
            raise ValueError("at least one of pickscore, clip_score, aesthetic and hps must have a positive weight")
        return self


class Infrastructure(BaseModel):
    """Redis, the artifact store, expiry, and the delivery guarantees' timers."""

    # No broker URL means "embedded": `framefleet demo` starts its own Redis.
    broker_url: str | None = None
    result_backend: str | None = None
    state_redis_url: str | None = None
    # Redis Sentinel: a URL `sentinel://HOST:PORT;sentinel://HOST:PORT;...` (any of the three above)
    # reaches the master these sentinels monitor under this name, and follows it through a failover.
    # The master's password goes in the URL (`sentinel://:PASSWORD@HOST:PORT`); the sentinels' own,
    # if they require one, here. Declared after the URLs, which its check reads.
    redis_sentinel_master: str | None = Field(None, validate_default=True)
    redis_sentinel_password: SecretStr | None = None
    store_url: str = "file://./output"
    s3_endpoint_url: str | None = None
    s3_server_side_encryption: Literal["AES256", "aws:kms"] | None = None
    s3_sse_kms_key_id: str | None = None
    job_ttl_s: int = Field(7 * 24 * 3600, ge=60)
    # Redis redelivers an unacknowledged task after this; it must exceed the slowest task.
    visibility_timeout_s: int = Field(3600, ge=1)
    # Step leases: a running step renews its lease every lease_ttl_s / 3; the watchdog re-drives
    # a step whose lease expired (its worker died), at most max_redrives times before parking the job.
    lease_ttl_s: float = Field(30.0, gt=0)
    max_redrives: int = Field(3, ge=1)
    watchdog_interval_s: float = Field(10.0, gt=0)
    # `framefleet status` calls a job stalled after this long without progress.
    stall_after_s: float = Field(900.0, gt=0)
    # A create that died half-way (stage "creating") is discarded after this long.
    create_timeout_s: float = Field(120.0, gt=0)

    @field_validator("redis_sentinel_master")
    @classmethod
    def _master_named_for_sentinel_urls(cls, master: str | None, info: ValidationInfo) -> str | None:
        sentinel_urls = [name for name in ("broker_url", "result_backend", "state_redis_url")
                         if is_sentinel_url(info.data.get(name))]
        if sentinel_urls and not master:
            names = ", ".join(f"FRAMEFLEET_{name.upper()}" for name in sentinel_urls)
            raise ValueError(f"{names} names Redis Sentinel (sentinel://); set the name of the master "
                             "the sentinels monitor")
        return master


class Pipeline(BaseModel):
    """A job's defaults (each can be overridden per job) and which provider runs each stage."""

    num_variations: int = Field(4, ge=1, le=MAX_VARIATIONS)
    max_enhancement_iterations: int = Field(4, ge=1, le=10)
    score_threshold: float = Field(85.0, ge=0, le=100)
    convergence_epsilon: float = Field(0.5, ge=0)
    quality_threshold: float = Field(30.0, ge=0, le=100)
    score_weights: ScoreWeights = ScoreWeights()
    keep_traces: bool = False
    enhance: bool = True  # false: no LLM rounds, frames are generated from the original prompt
    # The vision judge (tasks/steps/judge.py): "vlm" compares the top two candidates when their
    # overall scores are within judge_margin points; its provider is the LLM provider's.
    judge: Literal["off", "vlm"] = "off"
    judge_margin: float = Field(5.0, ge=0, le=100)
    # Providers per stage; `auto` picks the real one when its key or weights exist.
    llm_provider: Literal["auto", "offline", "openai"] = "auto"
    image_provider: Literal["auto", "offline", "replicate"] = "auto"
    scorer: Literal["auto", "heuristic", "models"] = "auto"
    # Fault drills: make a stage fail on purpose ("enhancement", "scoring", "ranking").
    inject_faults: set[Literal["enhancement", "scoring", "ranking"]] = set()


class Scheduling(BaseModel):
    """When frames run (tasks/coordination/dispatch.py, slot_hold.py)."""

    # "priority" runs a running job's next frame ahead of new jobs' first frames; "fifo" is the
    # plain queue order (for comparison).
    scheduling: Literal["priority", "fifo"] = "priority"
    # Straggler cut: once min_variations of a frame's variations are stored, one still running
    # straggler_grace_s later is stopped (its prediction cancelled). min = num_variations: no cut.
    min_variations: int = Field(3, ge=1, le=MAX_VARIATIONS)
    straggler_grace_s: float = Field(20.0, gt=0)
    # Slot holding (priority scheduling only): a slot freed by a variation waits up to slot_hold_s,
    # once its round is complete, for the job's next round (the gap is scoring plus selection),
    # and up to slot_hold_siblings_s while the rest of its round runs. 0 turns holding off.
    slot_hold_s: float = Field(1.0, ge=0, le=60)
    slot_hold_siblings_s: float = Field(0.25, ge=0, le=60)
    # Scoring batched across frames (coordination/score_batch.py): a score task scores up to
    # score_batch_frames rounds waiting on the gpu queue in one pass; when fewer wait, it waits
    # score_batch_wait_ms and reads the queue once more. 1 scores every round alone.
    score_batch_frames: int = Field(16, ge=1, le=64)
    score_batch_wait_ms: float = Field(5.0, ge=0, le=1000)


class Limits(BaseModel):
    """What a request may ask for, and how reference images are fetched and checked."""

    max_frames: int = Field(64, ge=1)
    max_prompt_chars: int = Field(4000, ge=1)
    # The whole request as JSON, refused before it is validated (docs/request-limits.md). A legal
    # request at the other limits is about 260 KB; 1 MiB leaves room without letting 80 MB in.
    max_request_bytes: int = Field(1024 * 1024, ge=1024)
    # Reference images: decoded with a pixel cap and a format allow-list, shrunk to the working
    # size; URLs fetched with a size cap, a timeout per wait and one deadline for the whole fetch,
    # never from loopback/private/link-local/metadata addresses unless the host is allowed here.
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_image_bytes: int = Field(20_000_000, ge=1)
    image_formats: list[str] = ["PNG", "JPEG", "WEBP"]
    reference_max_side: int = Field(2048, ge=64)
    reference_url_timeout_s: float = Field(10.0, gt=0)
    reference_url_deadline_s: float = Field(15.0, gt=0)
    reference_url_allowed_hosts: list[str] = []


class Providers(BaseModel):
    """OpenAI and Replicate: keys, models, timeouts, the account's budgets, prices."""

    openai_api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("OPENAI_API_KEY",
                                                                                  "FRAMEFLEET_OPENAI_API_KEY"))
    replicate_api_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("REPLICATE_API_TOKEN", "FRAMEFLEET_REPLICATE_API_TOKEN")
    )
    # OpenAI (OPENAI_BASE_URL, read by the official client, points it at any compatible server).
    openai_model: str = "gpt-4o-mini"
    openai_temperature: float = Field(0.7, ge=0, le=2)
    openai_timeout_s: float = Field(60.0, gt=0)
    openai_max_retries: int = Field(3, ge=0)
    openai_requests_per_minute: int = Field(500, ge=1)  # per openai_rate_window_s, whole fleet
    openai_tokens_per_minute: int = Field(200_000, ge=1)
    openai_rate_window_s: float = Field(60.0, gt=0)
    openai_completion_tokens_estimate: int = Field(400, ge=0)  # counted against the token budget per request
    openai_rate_limit_max_wait_s: float = Field(600.0, ge=0)  # total wait per enhancement before the fallback
    # The judge: any OpenAI-compatible model that takes images and structured output. It sits on
    # the frame's critical path, so its waits are shorter than an enhancement's.
    judge_model: str = "gpt-4.1"
    judge_timeout_s: float = Field(30.0, gt=0)  # one request
    judge_max_wait_s: float = Field(60.0, ge=0)  # for the OpenAI budget, per judged frame
    # Replicate (REPLICATE_BASE_URL, read by the official client, points it at a proxy).
    replicate_model: str = "google/nano-banana"
    # A deployment of replicate_model ("owner/name", with warm instances): its predictions are created
    # there (POST /v1/deployments/{owner}/{name}/predictions). Other models: their registry entry's.
    replicate_deployment: str | None = Field(None, pattern=REPLICATE_NAME)
    replicate_prediction_timeout_s: float = Field(300.0, gt=0)
    replicate_http_timeout_s: float = Field(60.0, gt=0)
    replicate_rate_limit: int = Field(600, ge=1)  # prediction creations per window, whole fleet
    replicate_other_rate_limit: int = Field(3000, ge=1)  # non-creation API calls per replicate_rate_window_s
    replicate_rate_window_s: float = Field(60.0, gt=0)
    # The fleet's one prediction listing (docs/provider-budgets.md), not one poll per prediction.
    replicate_poll_interval_s: float = Field(1.0, gt=0)
    replicate_watch_max_pages: int = Field(10, ge=1)  # listing pages per sweep; the rest is left to the reconcile
    replicate_watch_lease_s: float = Field(10.0, gt=0)  # a dead watcher's lease expires after this
    replicate_reconcile_after_s: float = Field(30.0, gt=0)  # in flight but absent from listings this long: one GET
    replicate_reconcile_per_sweep: int = Field(1, ge=0)
    replicate_data_url_max_bytes: int = Field(256 * 1024, ge=0)  # smaller inputs go inline as data URLs; 0: never
    # The longest fleet-wide pause a provider's 429 can ask for (Retry-After, retry-after-ms,
    # x-ratelimit-reset-*, "resets in ~Ns"): Replicate's resets are ~30 s, OpenAI's minutes at most,
    # so a larger value is a broken header, not a reason to stop the fleet (docs/provider-pauses.md).
    provider_max_pause_s: float = Field(300.0, gt=0, le=3600)
    # Prices for the cost estimate in the manifest and the budget guard.
    openai_usd_per_1m_prompt_tokens: float = 0.15
    openai_usd_per_1m_completion_tokens: float = 0.60
    judge_usd_per_1m_prompt_tokens: float = 2.00  # gpt-4.1
    judge_usd_per_1m_completion_tokens: float = 8.00
    replicate_usd_per_prediction: dict[str, float] = {
        "google/nano-banana": 0.039, "bytedance/seedream-4": 0.03,
        "black-forest-labs/flux-kontext-pro": 0.04, "black-forest-labs/flux-schnell": 0.003,
    }
    # Budget guard (overrides.max_usd): tokens of one LLM call beyond the prompt it carries (the
    # instructions and critique; the least a reply takes).
    llm_call_estimate_tokens: tuple[int, int] = (800, 300)

    def tokens_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.openai_usd_per_1m_prompt_tokens
                + completion_tokens * self.openai_usd_per_1m_completion_tokens) / 1e6

    def judge_tokens_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.judge_usd_per_1m_prompt_tokens
                + completion_tokens * self.judge_usd_per_1m_completion_tokens) / 1e6

    def prediction_usd(self, model: str) -> float:
        return self.replicate_usd_per_prediction.get(model, 0.0)


class ScoringModels(BaseModel):
    """Where the scoring models' weights come from: hub id / open_clip name or tag / local path."""

    pickscore_model: str = DEFAULT_SOURCES["pickscore_model"]
    pickscore_processor: str = DEFAULT_SOURCES["pickscore_processor"]
    clip_model: str = DEFAULT_SOURCES["clip_model"]
    clip_pretrained: str = DEFAULT_SOURCES["clip_pretrained"]
    clip_quick_gelu: bool = False
    aesthetic_weights: str = DEFAULT_SOURCES["aesthetic_weights"]
    hps_model: str = DEFAULT_SOURCES["hps_model"]
    hps_weights: str = DEFAULT_SOURCES["hps_weights"]
    models_cache_dir: str | None = None


class OfflineProviders(BaseModel):
    """The embedded providers' simulated latency, failures and prices (tests, benchmarks, the
    budget guard without keys). A lognormal spread around the median and cold starts, drawn per
    call deterministically (tasks/providers/offline_latency.py)."""

    offline_llm_latency_s: float = Field(0.0, ge=0)
    offline_llm_latency_sigma: float = Field(0.0, ge=0, le=3)
    offline_llm_cold_start_rate: float = Field(0.0, ge=0, le=1)
    offline_llm_cold_start_s: float = Field(0.0, ge=0)
    offline_image_latency_s: float = Field(0.0, ge=0)
    offline_image_latency_sigma: float = Field(0.0, ge=0, le=3)
    offline_image_cold_start_rate: float = Field(0.0, ge=0, le=1)
    offline_image_cold_start_s: float = Field(0.0, ge=0)
    offline_image_failure_rate: float = Field(0.0, ge=0, le=1)
    # The offline image provider's bill (job key offline_calls): one Redis write per call, which a
    # real provider bills outside Redis; the benchmarks of the fleet's own Redis cost turn it off.
    offline_call_log: bool = True
    offline_usd_per_image: float = Field(0.0, ge=0)
    offline_usd_per_llm_call: float = Field(0.0, ge=0)


class Operations(BaseModel):
    """Logging, Flower and the metrics exporter."""

    log_level: str = "INFO"
    log_json: bool = False
    # Flower: "user:password" (several: comma-separated); required unless --local-only.
    flower_basic_auth: SecretStr | None = None
    flower_port: int = 5555
    # The job latency the alert rules hold the fleet to: p95 of submitted → finished (framefleet exporter).
    job_p95_alert_s: float = Field(1800.0, gt=0)


class Settings(Infrastructure, Pipeline, Scheduling, Limits, Providers, ScoringModels, OfflineProviders, Operations,
               BaseSettings):
    """One settings object for the whole fleet, grouped by concern; every field is read from
    ``FRAMEFLEET_<NAME>`` (the provider keys also from their usual variables)."""

    model_config = SettingsConfigDict(env_prefix="FRAMEFLEET_", extra="ignore", populate_by_name=True,
                                      allow_inf_nan=False)

    def model_sources(self) -> ModelSources:
        return ModelSources(pickscore_model=self.pickscore_model, pickscore_processor=self.pickscore_processor,
                            clip_model=self.clip_model, clip_pretrained=self.clip_pretrained,
                            clip_quick_gelu=self.clip_quick_gelu, aesthetic_weights=self.aesthetic_weights,
                            hps_model=self.hps_model, hps_weights=self.hps_weights, cache_dir=self.models_cache_dir)

    @property
    def backend_url(self) -> str | None:
        return self.result_backend or self.broker_url

    @property
    def state_url(self) -> str | None:
        return self.state_redis_url or self.broker_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
