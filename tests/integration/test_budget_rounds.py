"""The budget guard's later enhancement rounds leave what the job has promised affordable: one image
for each frame still to generate and the first round of each frame still waiting for its
enhancement. Enhancements run in parallel, so a frame can ask for its second round before the other
frames have reserved their first; the guard reserves on the real test Redis."""

from __future__ import annotations

import time

import pytest
from framefleet.config.settings import Settings, get_settings
from framefleet.tasks.coordination.budget import BudgetGuard
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.plan import build_frame_plan
from framefleet.tasks.job.requests import JobConfig, parse_request
from framefleet.tasks.job.spec import JobSpec

from tests.helpers import storyboard_request, unique_id

pytestmark = pytest.mark.integration

IMAGE, LLM_CALL = 0.01, 0.001  # a round is two calls: 0.002
FRAMES = ("clip_001_start", "clip_001_end", "clip_002_start", "clip_002_end")


@pytest.fixture
def storyboard(broker_url):
    """A stored two-clip storyboard (four frames waiting for their enhancement) and its guard, for a cap."""
    made = []

    def make(cap: float) -> tuple[Job, BudgetGuard]:
        request = parse_request("storyboard", storyboard_request(unique_id("budget-rounds"), 2,
                                                                 overrides={"max_usd": cap}))
        spec = JobSpec(job_id=request.job_id, kind="storyboard", aspect_ratio=request.aspect_ratio,
                       config=JobConfig.resolve(get_settings(), request.overrides), plan=build_frame_plan(request),
                       providers={"llm": "offline", "images": "offline"}, submitted=time.time())
        job = Job(request.job_id)
        job.create(spec)
        made.append(job)
        guard = BudgetGuard(job, spec)
        guard.settings = Settings(offline_usd_per_image=IMAGE, offline_usd_per_llm_call=LLM_CALL)
        return job, guard

    yield make
    for job in made:
        job.discard()


def prompt(job: Job, frame: str) -> str:
    return job.frames.all()[frame].original_prompt


def test_a_second_round_leaves_the_other_frames_first_rounds_and_images_affordable(storyboard):
    cap = 0.0485  # every first round and one image per frame fit (0.008 + 0.04), a second round too (0.050) does not
    job, guard = storyboard(cap)
    first = FRAMES[0]
    assert guard.llm_round(first, 1, prompt(job, first))
    # The other three frames have not reserved their first round yet: a second round now would
    # leave 0.0445, one image per frame but not their rounds as well.
    assert not guard.llm_round(first, 2, prompt(job, first))
    assert job.budget.degradations() == [f"{first}: budget: enhancement stopped before round 2"]
    assert all(guard.llm_round(frame, 1, prompt(job, frame)) for frame in FRAMES[1:])
    assert cap - job.budget.committed() >= len(FRAMES) * IMAGE - 1e-9  # every frame can still get an image


@pytest.mark.parametrize(("cap", "allowed"), [(0.0505, True), (0.0495, False)])
def test_a_second_round_is_allowed_exactly_when_the_promises_still_fit(storyboard, cap, allowed):
    job, guard = storyboard(cap)
    first = FRAMES[0]
    assert guard.llm_round(first, 1, prompt(job, first))
    # committed 0.002 + the round 0.002 + four images 0.04 + three first rounds 0.006 = 0.050
    assert guard.llm_round(first, 2, prompt(job, first)) is allowed
    assert job.budget.committed() == pytest.approx(0.004 if allowed else 0.002)
