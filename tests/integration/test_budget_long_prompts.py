"""Issue 21 (4.2): the budget guard prices an LLM round from the real prompt, so a long prompt never
commits more than ``max_usd``. The guard reserves on the real test Redis; the two agents are the
official OpenAI client against the local stand-in, whose requests are what the job would pay for."""

from __future__ import annotations

import json
import time

import pytest
from framefleet.config.settings import Settings, get_settings
from framefleet.tasks.coordination.budget import BudgetGuard, llm_round_price
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.plan import build_frame_plan
from framefleet.tasks.job.requests import JobConfig, parse_request
from framefleet.tasks.job.spec import JobSpec
from framefleet.tasks.providers.openai_llm import OpenAIPromptAgents
from framefleet.tasks.steps.enhance import enhance_prompt_iterative

from tests.fakes.openai_api import FakeOpenAI
from tests.helpers import unique_id

pytestmark = pytest.mark.integration

CAP = 0.0025  # fits four rounds at the old fixed 800 + 300 tokens a call, one round of a 3,900-character prompt
LONG = ("The keeper climbs the spiral stairs at dusk, lantern in hand, rain on the windows; " * 47)[:3900]
SHORT = "a keeper on the stairs"


@pytest.fixture
def openai_server(monkeypatch, broker_url):
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        yield server


def openai_job(prompt: str) -> tuple[Job, JobSpec]:
    """A one-scene job with a spending cap whose LLM stage is OpenAI (stored, so the guard is real)."""
    request = parse_request("references", {"job_id": unique_id("budget-prompt"), "scene_prompts": [prompt],
                                           "overrides": {"max_usd": CAP}})
    spec = JobSpec(job_id=request.job_id, kind="references", aspect_ratio=request.aspect_ratio,
                   config=JobConfig.resolve(get_settings(), request.overrides), plan=build_frame_plan(request),
                   providers={"llm": "openai", "images": "offline"}, submitted=time.time())
    state = Job(request.job_id)
    state.create(spec)
    return state, spec


def paid(server: FakeOpenAI, settings: Settings) -> float:
    """What the requests the stand-in answered cost: their messages and replies at 4 characters a token."""
    total = 0.0
    for request in server.requests:
        messages = request["body"]["messages"]
        reply = json.dumps(FakeOpenAI.default_reply(request["agent"], messages[-1]["content"]))
        total += (len(json.dumps(messages)) / 4 * settings.openai_usd_per_1m_prompt_tokens
                  + len(reply) / 4 * settings.openai_usd_per_1m_completion_tokens) / 1e6
    return total


def enhance_under_the_cap(server: FakeOpenAI, prompt: str) -> tuple[int, float, float]:
    """(rounds run, committed, paid) for one frame's enhancement under the guard."""
    state, spec = openai_job(prompt)
    guard = BudgetGuard(state, spec)
    server.requests.clear()
    try:
        result = enhance_prompt_iterative(
            prompt, OpenAIPromptAgents(Settings(openai_api_key="sk-test", openai_model="test-model")),
            max_iterations=4, score_threshold=101, convergence_epsilon=0,  # only the budget stops it early
            may_start_round=lambda iteration: guard.llm_round("scene_001", iteration, prompt))
        return len(result.rounds), state.budget.committed(), paid(server, guard.settings)
    finally:
        state.discard()


def test_a_long_prompt_never_commits_more_than_max_usd(openai_server):
    rounds, committed, spent = enhance_under_the_cap(openai_server, LONG)
    assert rounds >= 1
    assert spent <= committed <= CAP + 1e-9  # what was reserved covers what was paid, and fits the cap


def test_the_reserved_estimate_grows_with_the_prompt(openai_server):
    settings = get_settings()
    spec = openai_job(SHORT)[1]
    Job(spec.job_id).discard()
    assert llm_round_price(spec, settings, LONG) > 2 * llm_round_price(spec, settings, SHORT)
    assert llm_round_price(spec, settings, LONG, iteration=2) > llm_round_price(spec, settings, LONG)
    short_rounds, short_committed, short_spent = enhance_under_the_cap(openai_server, SHORT)
    long_rounds, long_committed, long_spent = enhance_under_the_cap(openai_server, LONG)
    assert short_rounds > long_rounds  # the same cap affords fewer rounds of a long prompt
    assert short_spent <= short_committed <= CAP + 1e-9 and long_spent <= long_committed <= CAP + 1e-9
