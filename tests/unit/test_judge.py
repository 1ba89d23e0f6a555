"""The vision judge's pure parts: which scores are a close call, how two orders become one verdict,
how selection follows it, the offline judge, and what an OpenAI judge request carries."""

from __future__ import annotations

import base64
import io
import json

import pytest
from framefleet.config.celery import JUDGE_CANDIDATES, SCORE_VARIATIONS, TASK_QUEUES
from framefleet.tasks.artifacts.images import downsized_jpeg
from framefleet.tasks.job.records import JudgeRecord, Scores, VariationRecord
from framefleet.tasks.providers.judges import JudgeImage, JudgeReply, JudgeRequest, OfflineFrameJudge
from framefleet.tasks.providers.openai_judge import judge_messages
from framefleet.tasks.providers.openai_llm import estimated_tokens
from framefleet.tasks.steps.judge import close_call, combine
from framefleet.tasks.steps.select import best_variation, follow_judge
from PIL import Image, ImageDraw


def variation(index: int, overall: float | None, key: bool = True) -> dict:
    scores = Scores(overall=overall, pickscore=overall) if overall is not None else None
    return VariationRecord(index=index, key=f"v{index}.png" if key else None, scores=scores).model_dump(mode="json")


def scored(*overalls, error=None) -> dict:
    return {"variations": [variation(i, o) for i, o in enumerate(overalls, start=1)], "error": error}


def reply(preferred: str) -> JudgeReply:
    return JudgeReply(continuity=preferred, prompt_adherence=preferred, defects="tie", preferred=preferred,
                      reason=f"prefers {preferred}")


def blank_verdict() -> JudgeRecord:
    return JudgeRecord(provider="openai", model="m", candidates=[3, 1], gap=1.0, selected=3, reason="")


def test_a_close_call_is_the_two_best_in_score_order_within_the_margin():
    first, second, gap = close_call(scored(70.0, 40.0, 72.5, 10.0), margin=5)
    assert (first.index, second.index, gap) == (3, 1, 2.5)
    assert close_call(scored(70.0, 40.0, 80.0), margin=5) is None  # a clear winner: no judge
    assert close_call(scored(70.0, None), margin=100) is None  # one scored candidate: nothing to compare
    assert close_call(scored(70.0, 69.0, error="CUDA out of memory"), margin=100) is None


def test_both_orders_agreeing_make_a_winner_and_disagreeing_keep_the_score_order():
    # Order 1 shows (v3, v1), order 2 shows (v1, v3): "B" then "A" both name v1.
    overturned = combine(blank_verdict(), [reply("B"), reply("A")], (3, 1))
    assert (overturned.winner, overturned.selected, overturned.agreed_with_scores) == (1, 1, False)
    assert [v.shown for v in overturned.verdicts] == [[3, 1], [1, 3]]
    assert [v.preferred for v in overturned.verdicts] == [1, 1] and overturned.verdicts[0].defects is None

    confirmed = combine(blank_verdict(), [reply("A"), reply("B")], (3, 1))
    assert (confirmed.winner, confirmed.selected, confirmed.agreed_with_scores) == (3, 3, True)

    biased = combine(blank_verdict(), [reply("A"), reply("A")], (3, 1))  # position bias: always the first shown
    assert (biased.winner, biased.selected, biased.agreed_with_scores) == (None, 3, None)
    assert "disagreed" in biased.reason and "score order stands" in biased.reason

    tied = combine(blank_verdict(), [reply("tie"), reply("tie")], (3, 1))
    assert (tied.winner, tied.selected) == (None, 3) and "no difference" in tied.reason


def test_selection_follows_the_judge_and_keeps_rank_one_for_the_selected():
    variations = [VariationRecord.model_validate(v) for v in scored(70.0, 40.0, 72.5)["variations"]]
    chosen = best_variation(variations, None, [])
    assert chosen.index == 3
    judge = combine(blank_verdict(), [reply("B"), reply("A")], (3, 1))
    selected = follow_judge(variations, chosen, judge)
    assert selected.index == 1 and [v.rank for v in variations] == [1, 3, 2]


def test_a_round_whose_ranking_failed_ignores_the_judge():
    variations = [VariationRecord.model_validate(v) for v in scored(70.0, 72.5)["variations"]]
    unranked = variations[1]  # a fallback: the ranking gave no ranks
    judge = JudgeRecord(provider="openai", model="m", candidates=[2, 1], gap=2.5, selected=1, winner=1, reason="")
    assert follow_judge(variations, unranked, judge) is unranked


def jpeg(colour, size=(64, 36)) -> bytes:
    return downsized_jpeg(Image.new("RGB", size, colour), 512)


def striped(colours) -> bytes:
    image = Image.new("RGB", (64, 36), colours[0])
    draw = ImageDraw.Draw(image)
    for x in range(0, 64, 16):
        draw.rectangle((x, 0, x + 7, 36), fill=colours[1])
    return downsized_jpeg(image, 512)


def test_the_offline_judge_prefers_the_candidate_consistent_with_the_inputs_in_either_order():
    inputs = [JudgeImage(label="reference image", jpeg=striped(((200, 30, 30), (20, 20, 200))))]
    consistent, other = striped(((190, 40, 30), (30, 20, 210))), striped(((20, 200, 20), (230, 230, 30)))
    judge = OfflineFrameJudge()
    assert judge.compare(JudgeRequest(prompt="p", inputs=inputs, first=consistent, second=other)).preferred == "A"
    assert judge.compare(JudgeRequest(prompt="p", inputs=inputs, first=other, second=consistent)).preferred == "B"
    no_inputs = judge.compare(JudgeRequest(prompt="p", first=consistent, second=other))
    assert no_inputs.preferred == "tie" and "offline" in no_inputs.reason
    assert judge.usage == {"judge_calls": 3} and "not a vision model" in judge.model


def test_an_openai_judge_request_carries_the_inputs_then_both_candidates_as_small_images():
    request = JudgeRequest(prompt="The keeper lights the lamp", first=jpeg((250, 0, 0), (1920, 1080)),
                           second=jpeg((0, 0, 250)), inputs=[JudgeImage(label="reference image", jpeg=jpeg((9, 9, 9))),
                                                             JudgeImage(label="previous frame", jpeg=jpeg((99, 9, 9)))])
    system, user = judge_messages(request)
    assert "continuity" in system["content"] and "not their order" in system["content"]
    texts = [p["text"] for p in user["content"] if p["type"] == "text"]
    assert texts == ["Frame prompt:\nThe keeper lights the lamp", "Input, the reference image:",
                     "Input, the previous frame:", "Candidate A:", "Candidate B:"]
    images = [p["image_url"] for p in user["content"] if p["type"] == "image_url"]
    assert [i["detail"] for i in images] == ["low"] * 4
    decoded = [Image.open(io.BytesIO(base64.b64decode(i["url"].split(",", 1)[1]))) for i in images]
    assert decoded[2].size == (512, 288) and decoded[2].getpixel((10, 10))[0] > 200  # A, downsized from 1920 px
    # The limiter counts each image at the low-detail price, not its base64 text.
    messages = judge_messages(request)
    assert estimated_tokens(messages, 85) == len(json.dumps([system, {
        **user, "content": [p for p in user["content"] if p["type"] == "text"]}])) // 4 + 4 * 85
    plain = [{"role": "user", "content": "a prompt"}]
    assert estimated_tokens(plain, 85) == len(json.dumps(plain)) // 4  # text-only requests as before


def test_the_judge_runs_on_the_llm_queue_never_the_gpu():
    assert TASK_QUEUES[JUDGE_CANDIDATES] == "llm" and TASK_QUEUES[SCORE_VARIATIONS] == "gpu"


@pytest.mark.parametrize("field, value", [("judge", "gpt"), ("judge_margin", -1), ("judge_margin", 101)])
def test_judge_overrides_are_checked_naming_the_field(field, value):
    from framefleet.tasks.job.requests import RequestError, parse_request

    with pytest.raises(RequestError, match=f"overrides.{field}"):
        parse_request("storyboard", {"clips": [{"start_prompt": "a", "end_prompt": "b"}],
                                     "overrides": {field: value}})
