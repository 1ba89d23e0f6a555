"""Provider registry: which LLM, vision judge and image provider run, chosen by name from settings.

``auto`` picks the real provider when its key is set and that provider is registered here,
the offline one otherwise. The vision judge runs on the LLM provider (one OpenAI account).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

from framefleet.config.settings import Settings, get_settings
from framefleet.tasks.job.model import Job
from framefleet.tasks.providers.agents import PromptAgents
from framefleet.tasks.providers.base import ImageGenerator
from framefleet.tasks.providers.judges import FrameJudge, OfflineFrameJudge
from framefleet.tasks.providers.offline_images import OfflineImageGenerator
from framefleet.tasks.providers.offline_latency import LatencyProfile
from framefleet.tasks.providers.offline_llm import OfflinePromptAgents


def _openai(settings: Settings) -> PromptAgents:
    from framefleet.tasks.providers.openai_llm import OpenAIPromptAgents

    return OpenAIPromptAgents(settings)


def _openai_judge(settings: Settings) -> FrameJudge:
    from framefleet.tasks.providers.openai_judge import OpenAIFrameJudge

    return OpenAIFrameJudge(settings)


def _replicate(settings: Settings) -> ImageGenerator:
    from framefleet.tasks.providers.replicate_images import ReplicateImageGenerator

    return ReplicateImageGenerator(settings)


def offline_llm_latency(s: Settings) -> LatencyProfile:
    return LatencyProfile(median_s=s.offline_llm_latency_s, sigma=s.offline_llm_latency_sigma,
                          cold_start_rate=s.offline_llm_cold_start_rate, cold_start_s=s.offline_llm_cold_start_s)


def offline_image_latency(s: Settings) -> LatencyProfile:
    return LatencyProfile(median_s=s.offline_image_latency_s, sigma=s.offline_image_latency_sigma,
                          cold_start_rate=s.offline_image_cold_start_rate, cold_start_s=s.offline_image_cold_start_s)


# Factories take the settings and a context (job/frame) that only the offline agents use, to
# key their latency draws.
PROMPT_AGENTS: dict[str, Callable[[Settings, str], PromptAgents]] = {
    "offline": lambda s, context: OfflinePromptAgents(offline_llm_latency(s), context),
    "openai": lambda s, context: _openai(s),
}
FRAME_JUDGES: dict[str, Callable[[Settings, str], FrameJudge]] = {
    "offline": lambda s, context: OfflineFrameJudge(offline_llm_latency(s), context),
    "openai": lambda s, context: _openai_judge(s),
}
IMAGE_GENERATORS: dict[str, Callable[[Settings], ImageGenerator]] = {
    "offline": lambda s: OfflineImageGenerator(offline_image_latency(s),
                                               failure_rate=s.offline_image_failure_rate,
                                               call_log=(lambda r: Job(r.job_id).ledger.log_offline_call(r.ledger_key))
                                               if s.offline_call_log else None),
    "replicate": _replicate,
}


def llm_provider_name(settings: Settings) -> str:
    if settings.llm_provider == "auto":
        return "openai" if settings.openai_api_key and "openai" in PROMPT_AGENTS else "offline"
    return settings.llm_provider


def image_provider_name(settings: Settings) -> str:
    if settings.image_provider == "auto":
        return "replicate" if settings.replicate_api_token and "replicate" in IMAGE_GENERATORS else "offline"
    return settings.image_provider


def _lookup(registry: dict, name: str, field: str):
    if name not in registry:
        raise ValueError(f"{field}: provider {name!r} is not available (have {sorted(registry)})")
    return registry[name]


def prompt_agents(settings: Settings, context: str = "") -> PromptAgents:
    """New agents per enhancement: they count the tokens of that one frame. ``context`` names
    the frame ("job/frame") so the offline agents' latency draws replay exactly."""
    return _lookup(PROMPT_AGENTS, llm_provider_name(settings), "llm_provider")(settings, context)


def frame_judge(settings: Settings, provider: str, context: str = "") -> FrameJudge:
    """A new judge per judged frame (it counts that frame's calls); ``provider`` is the one the job
    was created with (its spec's ``providers["judge"]``)."""
    return _lookup(FRAME_JUDGES, provider, "judge")(settings, context)


@lru_cache(maxsize=1)
def image_generator() -> ImageGenerator:
    """One per worker process (shares the HTTP connection pool across threads)."""
    settings = get_settings()
    return _lookup(IMAGE_GENERATORS, image_provider_name(settings), "image_provider")(settings)
