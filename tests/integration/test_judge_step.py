"""The judge step with the official OpenAI client against the local stand-in (image content parts,
structured output, 429s, errors, slow answers). Steps run in this process on the real test Redis
and a real store, as the race tests run them; the whole job on real workers is
test_judge_fleet.py."""

from __future__ import annotations

import numpy as np
import pytest
from framefleet.config.celery import JUDGE_CANDIDATES, SCORE_VARIATIONS, SELECT_VARIATION
from framefleet.config.settings import get_settings
from framefleet.tasks.artifacts.images import decode_image, downsized_jpeg
from framefleet.tasks.coordination import dispatch
from framefleet.tasks.coordination.budget import judge_call_price
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.rounds import round_id
from framefleet.tasks.job.states import NoteKind, PromptSource
from framefleet.tasks.steps.judge import close_call
from PIL import Image

from tests.fakes.openai_api import FakeOpenAI
from tests.helpers import create_here, put_reference, storyboard_request, unique_id

pytestmark = pytest.mark.integration
ENHANCED = PromptSource.ENHANCED
START, END = "clip_001_start", "clip_001_end"


@pytest.fixture
def judge_api(local_steps, monkeypatch):
    """Jobs created here judge with OpenAI (the stand-in), every round a close call."""
    with FakeOpenAI() as server:
        for name, value in {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-judge",
                            "FRAMEFLEET_LLM_PROVIDER": "openai", "FRAMEFLEET_JUDGE": "vlm",
                            "FRAMEFLEET_JUDGE_MARGIN": "100", "FRAMEFLEET_JUDGE_TIMEOUT_S": "1",
                            "FRAMEFLEET_OPENAI_MAX_RETRIES": "1"}.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        yield local_steps, server


def luma(image: Image.Image) -> float:
    return float(np.asarray(image.convert("L"), dtype=np.float32).mean())


def darker(a: Image.Image, b: Image.Image, inputs) -> str:
    return "A" if luma(a) < luma(b) else "B"


def new_job(store, **overrides) -> str:
    job_id = unique_id("judge")
    reference = put_reference(store, job_id, (30, 160, 90))
    return create_here("storyboard", storyboard_request(job_id, 1, reference_image=reference,
                                                        overrides={"enhance": False, **overrides}))


def scored_round(job_id: str, frame: str) -> dict:
    from framefleet.tasks import entry

    results = [entry.generate_variation(job_id, frame, ENHANCED, index) for index in range(1, 5)]
    return entry.score_variations(results, job_id, frame)


def judged_frames(server: FakeOpenAI) -> list[dict]:
    return [r for r in server.requests if r["agent"] == "JudgeReply"]


def test_a_close_call_is_judged_in_both_orders_with_the_frames_images(judge_api):
    from framefleet.tasks import entry

    store, server = judge_api
    server.judge_rule = darker
    job_id = new_job(store)
    for frame in (START, END):
        entry.enhance_prompt(job_id, frame)  # no LLM rounds (enhance: false); START's round is enqueued
    judged = entry.judge_candidates(scored_round(job_id, START), job_id, START, ENHANCED)
    entry.select_variation(judged, job_id, START, ENHANCED)  # END is enqueued: its inputs are known
    scored = scored_round(job_id, END)
    before = len(server.requests)
    judged = entry.judge_candidates(scored, job_id, END, ENHANCED)

    first, second, gap = close_call(scored, 100)
    asked = judged_frames(server)[-2:]
    assert len(server.requests) - before == 2
    sent = {name: decode_image(downsized_jpeg(decode_image(store.get(key)), 512)) for name, key in (
        ("reference", f"jobs/{job_id}/inputs/reference.png"), ("previous", f"jobs/{job_id}/frames/{START}.png"),
        (first.index, first.key), (second.index, second.key))}

    def which(received: Image.Image) -> str | int:
        """The image the judge step sent that the stand-in received (a JPEG decoded once more)."""
        close = [name for name, image in sent.items() if image.size == received.size
                 and np.abs(np.asarray(received, float) - np.asarray(image, float)).mean() < 2]
        assert len(close) == 1
        return close[0]

    shown = []
    for request in asked:  # the two orders are asked at once: either may arrive first
        assert request["body"]["model"] == "gpt-4.1" and "temperature" not in request["body"]
        assert [label for label, _ in request["images"]] == ["Input, the reference image:",
                                                             "Input, the previous frame:", "Candidate A:",
                                                             "Candidate B:"]
        assert all(max(image.size) <= 512 for _, image in request["images"])  # small copies, not full-size PNGs
        names = [which(image) for _, image in request["images"]]
        assert names[:2] == ["reference", "previous"]
        shown.append(names[2:])
    assert sorted(shown) == sorted([[first.index, second.index], [second.index, first.index]])  # both orders

    darkest = first.index if luma(sent[first.index]) < luma(sent[second.index]) else second.index
    verdict = judged["judge"]
    assert verdict["candidates"] == [first.index, second.index] and verdict["gap"] == gap
    assert [v["shown"] for v in verdict["verdicts"]] == [[first.index, second.index], [second.index, first.index]]
    assert verdict["winner"] == verdict["selected"] == darkest
    assert verdict["agreed_with_scores"] == (darkest == first.index)
    entry.select_variation(judged, job_id, END, ENHANCED)
    record = Job(job_id).frames.get(END)
    assert record.selected.index == darkest and record.judge.winner == darkest
    assert next(v for v in record.variations if v.index == darkest).rank == 1
    costs = Job(job_id).ledger.costs()[END]
    assert costs == {"images_stored": 4, "judge_calls": 2, "judge_prompt_tokens": 2 * (100 + 4 * 85),
                     "judge_completion_tokens": 40}


def test_a_judge_step_run_again_pays_nothing_twice(judge_api):
    from framefleet.tasks import entry

    store, server = judge_api
    server.judge_rule = darker
    job_id = new_job(store)
    entry.enhance_prompt(job_id, START)
    scored = scored_round(job_id, START)
    first = entry.judge_candidates(scored, job_id, START, ENHANCED)
    asked = len(server.requests)
    assert entry.judge_candidates(scored, job_id, START, ENHANCED) == first  # redelivered: the stored outcome
    state = Job(job_id)
    state.r.hdel(state.keys.judged, round_id(START, 0, ENHANCED))  # died after asking, before storing
    assert entry.judge_candidates(scored, job_id, START, ENHANCED)["judge"] == first["judge"]  # the ledger's answers
    assert len(server.requests) == asked == 2
    assert state.ledger.costs()[START]["judge_calls"] == 2


def test_a_429_pauses_the_judge_as_it_pauses_the_enhancement(judge_api):
    from framefleet.tasks import entry

    store, server = judge_api
    server.judge_rule = darker
    server.agent_script["JudgeReply"] = [("429", 1)]
    job_id = new_job(store)
    entry.enhance_prompt(job_id, START)
    judged = entry.judge_candidates(scored_round(job_id, START), job_id, START, ENHANCED)
    assert judged["judge"]["winner"] is not None and judged["judge_note"] is None
    costs = Job(job_id).ledger.costs()[START]
    assert costs["judge_calls"] == 2 and costs["judge_rate_limit_waits"] >= 1  # the fleet-wide pause, counted
    assert len(judged_frames(server)) == 3  # the throttled request, then both answers


@pytest.mark.parametrize("failure", ["server errors", "timeout"])
def test_a_judge_that_fails_keeps_the_score_order_and_says_so(judge_api, failure):
    from framefleet.tasks import entry

    store, server = judge_api
    if failure == "timeout":
        server.agent_latency_s["JudgeReply"] = 3.0  # past FRAMEFLEET_JUDGE_TIMEOUT_S (1 s), every try
    else:
        server.agent_script["JudgeReply"] = [("500",)] * 8
    job_id = new_job(store)
    entry.enhance_prompt(job_id, START)
    scored = scored_round(job_id, START)
    judged = entry.judge_candidates(scored, job_id, START, ENHANCED)
    entry.select_variation(judged, job_id, START, ENHANCED)

    first, second, _ = close_call(scored, 100)
    record = Job(job_id).frames.get(START)
    assert record.status == "succeeded" and record.selected.index == first.index  # the frame is never lost
    assert record.judge.error and record.judge.winner is None and record.judge.selected == first.index
    assert "timed out" in record.judge.error.lower() if failure == "timeout" else "500" in record.judge.error
    assert record.has_note(NoteKind.JUDGE_FAILED)
    assert any(f.startswith(f"vision judge failed: score order, v{first.index} kept") for f in record.fallbacks)


def test_judge_calls_are_reserved_by_the_budget_guard_and_refused_when_they_do_not_fit(judge_api):
    from framefleet.tasks import entry

    store, server = judge_api
    server.judge_rule = darker
    spec = Job(new_job(store)).spec
    price = judge_call_price(spec, get_settings(), Job(spec.job_id).frames.get(START).original_prompt, images=3)
    assert price > 0
    for cap, affordable in ((2 * price + 1e-9, True), (1.5 * price, False)):
        job_id = new_job(store, max_usd=cap)
        state = Job(job_id)
        entry.enhance_prompt(job_id, START)
        asked = len(judged_frames(server))
        judged = entry.judge_candidates(scored_round(job_id, START), job_id, START, ENHANCED)
        entry.select_variation(judged, job_id, START, ENHANCED)
        record = state.frames.get(START)
        assert record.status == "succeeded"
        if affordable:  # both calls reserved together, then paid and counted
            assert state.budget.committed() == pytest.approx(2 * price)
            assert len(judged_frames(server)) - asked == 2 and state.ledger.costs()[START]["judge_calls"] == 2
            assert record.judge.winner is not None
        else:  # refused before any call: the score order stands, the degradation is recorded
            assert state.budget.committed() == 0 and len(judged_frames(server)) == asked
            assert record.has_note(NoteKind.JUDGE_BUDGET) and record.judge.error.startswith("budget")
            assert state.budget.degradations() == [f"{START}: budget: no vision judge (score order kept)"]
            assert "judge_calls" not in state.ledger.costs().get(START, {})


def test_only_a_job_with_the_judge_on_gets_the_judge_link(judge_api, monkeypatch):
    from framefleet.tasks import entry

    store, _ = judge_api
    bodies: list[list[str]] = []
    send_chord = dispatch.send_chord

    def record(job, header, body):
        bodies.append([t.task for t in body.tasks])
        return send_chord(job, header, body)

    monkeypatch.setattr(dispatch, "send_chord", record)
    for judge in ("vlm", "off"):
        entry.enhance_prompt(new_job(store, judge=judge), START)
    assert bodies == [[SCORE_VARIATIONS, JUDGE_CANDIDATES, SELECT_VARIATION], [SCORE_VARIATIONS, SELECT_VARIATION]]


def test_the_stand_in_refuses_an_image_part_that_is_not_an_image(judge_api):
    import openai

    _, server = judge_api
    client = openai.OpenAI(api_key="sk-judge", base_url=server.base_url, max_retries=0)
    not_an_image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl",
                                                       "detail": "low"}}
    schema = {"type": "json_schema", "json_schema": {"name": "JudgeReply", "schema": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError, match="Invalid image") as refused:
        client.chat.completions.create(model="m", response_format=schema,
                                       messages=[{"role": "user", "content": [not_an_image]}])
    assert refused.value.code == "invalid_image_url" and not server.requests  # refused: nothing answered
