"""Whole jobs with the vision judge on, on real workers: the enhancement and the judge through the
official OpenAI client against the local stand-in, offline images, the heuristic scorer, and a
margin that makes every round a close call."""

from __future__ import annotations

import numpy as np
import pytest
from framefleet.config.settings import get_settings
from framefleet.tasks.artifacts.images import decode_image, downsized_jpeg
from framefleet.tasks.artifacts.store import open_store
from framefleet.tasks.coordination.budget import judge_call_price, llm_round_price
from framefleet.tasks.job.model import Job
from PIL import Image

from tests.fakes.openai_api import FakeOpenAI
from tests.helpers import put_reference, run_job, storyboard_request, unique_id

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def services(tmp_path_factory, start_fleet):
    root = tmp_path_factory.mktemp("artifacts-judge")
    with FakeOpenAI() as openai_api:
        fleet = start_fleet({"FRAMEFLEET_STORE_URL": f"file://{root}", "OPENAI_API_KEY": "sk-judge-fleet",
                             "OPENAI_BASE_URL": openai_api.base_url, "FRAMEFLEET_IMAGE_PROVIDER": "offline",
                             "FRAMEFLEET_JUDGE": "vlm", "FRAMEFLEET_JUDGE_MARGIN": "100"})
        yield open_store(f"file://{root}"), openai_api
        fleet.stop()  # while the stand-in still answers


def luma(image: Image.Image) -> float:
    return float(np.asarray(image.convert("L"), dtype=np.float32).mean())


def sent_to_judge(store, key: str) -> Image.Image:
    """A candidate as the judge step sends it (the same bytes the stand-in judged)."""
    return decode_image(downsized_jpeg(decode_image(store.get(key)), 512))


def judge_requests(api: FakeOpenAI, prompt: str) -> list[dict]:
    """The judge's requests about the frame generated from ``prompt``."""
    return [r for r in api.requests if r["agent"] == "JudgeReply"
            and r["body"]["messages"][1]["content"][0]["text"] == f"Frame prompt:\n{prompt}"]


def run(app, store, clips: int, **overrides) -> dict:
    job_id = unique_id("judged")
    reference = put_reference(store, job_id, (30, 160, 90))
    status, manifest = run_job(app, "storyboard", storyboard_request(job_id, clips, reference_image=reference,
                                                                     overrides=overrides), store)
    assert status.outcome == "succeeded"
    return manifest


def test_selection_follows_the_judge_where_both_orders_agree(celery_app, services):
    store, api = services
    api.judge_rule = lambda a, b, inputs: "A" if luma(a) < luma(b) else "B"  # the darker image, in either order
    manifest = run(celery_app, store, clips=2)
    overturned = 0
    for frame in manifest["frames"]:
        asked = judge_requests(api, frame["enhanced_prompt"])
        assert len(asked) == 2  # one question per order
        labels = [label for label, _ in asked[0]["images"]]
        inputs = ["Input, the reference image:"] + (["Input, the previous frame:"] if len(frame["inputs"]) == 2 else [])
        assert labels == inputs + ["Candidate A:", "Candidate B:"]
        judge = frame["judge"]
        first, second = judge["candidates"]
        scores = {v["index"]: v["scores"]["overall"] for v in frame["variations"]}
        assert scores[first] == max(scores.values()) and judge["gap"] == pytest.approx(scores[first] - scores[second])
        a, b = (sent_to_judge(store, v["key"]) for index in (first, second)
                for v in frame["variations"] if v["index"] == index)
        darker = first if luma(a) < luma(b) else second
        assert [v["preferred"] for v in judge["verdicts"]] == [darker, darker]
        assert judge["winner"] == judge["selected"] == frame["selected"]["index"] == darker
        assert judge["agreed_with_scores"] == (darker == first) and judge["model"] == "gpt-4.1"
        assert next(v for v in frame["variations"] if v["index"] == darker)["rank"] == 1
        overturned += darker != first
        for variation in frame["variations"]:  # what each metric added to the overall
            parts = variation["scores"]["contributions"]
            assert set(parts) == {"pickscore", "clip_score", "aesthetic", "consistency"}
            assert sum(parts.values()) == pytest.approx(variation["scores"]["overall"], abs=0.01)
    assert overturned >= 1  # the judge changed at least one selection the scores would have made
    total = manifest["cost"]["total"]
    assert total["judge_calls"] == 2 * len(manifest["frames"])
    settings = get_settings()
    assert manifest["providers"]["judge"] == "openai"
    judge_usd = (total["judge_prompt_tokens"] * settings.judge_usd_per_1m_prompt_tokens
                 + total["judge_completion_tokens"] * settings.judge_usd_per_1m_completion_tokens) / 1e6
    llm_usd = (total["prompt_tokens"] * settings.openai_usd_per_1m_prompt_tokens
               + total["completion_tokens"] * settings.openai_usd_per_1m_completion_tokens) / 1e6
    assert manifest["cost"]["estimated_usd"] == pytest.approx(judge_usd + llm_usd, abs=1e-6)


def test_where_the_orders_disagree_the_scores_decide(celery_app, services):
    store, api = services
    api.judge_rule = lambda a, b, inputs: "A"  # position bias: whatever is shown first
    manifest = run(celery_app, store, clips=1)
    for frame in manifest["frames"]:
        judge = frame["judge"]
        assert judge["winner"] is None and judge["agreed_with_scores"] is None
        assert [v["preferred"] for v in judge["verdicts"]] == judge["candidates"]  # each order its first
        assert frame["selected"]["index"] == judge["selected"] == judge["candidates"][0]
        assert frame["selected"]["overall"] == max(v["scores"]["overall"] for v in frame["variations"])
        assert not frame["fallbacks"]  # a disagreement is a verdict, not a failure


def test_judge_calls_are_reserved_and_counted_like_enhancement_calls(celery_app, services):
    store, api = services
    api.judge_rule = lambda a, b, inputs: "B"
    manifest = run(celery_app, store, clips=1, max_usd=5.0)
    spec = Job(manifest["job_id"]).spec
    settings = get_settings()
    reserved = 0.0
    for frame in manifest["frames"]:
        rounds = frame["enhancement"]["iterations"]
        reserved += sum(llm_round_price(spec, settings, frame["original_prompt"], i) for i in range(1, rounds + 1))
        reserved += 2 * judge_call_price(spec, settings, frame["enhanced_prompt"], len(frame["inputs"]) + 2)
    assert manifest["budget"]["committed_usd"] == pytest.approx(reserved, abs=1e-6)
    assert manifest["cost"]["total"]["judge_calls"] == 2 * len(manifest["frames"])
    assert manifest["cost"]["total"]["llm_calls"] == 2 * sum(f["enhancement"]["iterations"] for f in manifest["frames"])


def test_a_job_without_the_judge_is_never_judged(celery_app, services):
    store, api = services
    before = len([r for r in api.requests if r["agent"] == "JudgeReply"])
    manifest = run(celery_app, store, clips=1, judge="off")
    assert all(frame["judge"] is None for frame in manifest["frames"])
    assert "judge" not in manifest["providers"] and "judge_calls" not in manifest["cost"]["total"]
    assert len([r for r in api.requests if r["agent"] == "JudgeReply"]) == before
