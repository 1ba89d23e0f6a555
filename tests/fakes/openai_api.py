"""The parts of OpenAI's chat-completions API that framefleet uses, for the official client, with
an organisation's request and token budgets per ``window_s`` (60 s on the real service) enforced:
every answer carries the ``x-ratelimit-*`` headers, and a request over a budget gets OpenAI's 429
(``rate_limit_exceeded``) with only those headers to say when to come back.

Vision requests (the judge) carry image content parts: each must be a base64 data URL of an image
with a valid ``detail``, else the answer is OpenAI's 400 (``invalid_image_url``); an image counts
85 tokens at "low" detail (765 otherwise, a 512 px tile's worth) toward the budgets and ``usage``."""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
import threading
import time
from collections import Counter, deque
from typing import Callable

from PIL import Image, UnidentifiedImageError

from tests.fakes.http import JsonHandler, StandIn

DIMENSIONS = ("completeness", "specificity", "professionalism", "cinematography", "brand_alignment")
IMAGE_TOKENS = {"low": 85, "high": 765, "auto": 765}
TEXT_REQUEST_TOKENS = 100  # what a text-only request reports as its prompt tokens


class BadImage(ValueError):
    """An image content part the real API refuses."""


def image_parts(messages: list[dict]) -> list[tuple[str, Image.Image, str]]:
    """(the text part just before it, the decoded image, its detail) for every image content part."""
    found, label = [], ""
    for message in messages:
        if not isinstance(message["content"], list):
            continue
        for part in message["content"]:
            if part["type"] == "text":
                label = part["text"]
                continue
            url, detail = part["image_url"]["url"], part["image_url"].get("detail", "auto")
            match = re.fullmatch(r"data:image/(png|jpeg|webp|gif);base64,(.+)", url, re.S)
            if detail not in IMAGE_TOKENS or match is None:
                raise BadImage(f"Invalid image URL or detail ({detail!r}): expected a base64 data URL")
            try:
                image = Image.open(io.BytesIO(base64.b64decode(match.group(2), validate=True)))
                image.load()
            except (binascii.Error, UnidentifiedImageError, OSError) as error:
                raise BadImage(f"Invalid image: {error}") from None
            found.append((label, image.convert("RGB"), detail))
    return found


def text_only(messages: list[dict]) -> list[dict]:
    return [{**m, "content": [p for p in m["content"] if p["type"] == "text"]} if isinstance(m["content"], list)
            else m for m in messages]


class FakeOpenAI(StandIn):
    """Scripted replies: ``script`` is consumed first (one entry per request), then the defaults.

    Entries: ("429", retry_after) | ("429", {header: value}) | ("500",) | ("garbage",) | ("reply", dict).
    A scripted 429 sends ``Retry-After: str(retry_after)``, or exactly the headers given (any
    text, as a misbehaving server might: "inf", "1e12", "soon").
    Default Creative Director: appends " refined" to the current prompt. Default Prompt Engineer:
    scores 60 + 15 per " refined" in the prompt, so a frame reaches 90 on the third round.
    The judge: ``judge_rule(candidate_a, candidate_b, inputs)`` names the image it prefers ("A",
    "B" or "tie"); by default it always says "A", the position bias real judges show.
    ``agent_script[agent]`` is consumed by that agent's requests only (after ``script``), and
    ``agent_latency_s[agent]`` replaces ``latency_s`` for them.
    """

    COMPLETION_TOKENS = 20

    def __init__(self, requests_limit: int = 10_000, tokens_limit: int = 10_000_000, window_s: float = 60.0,
                 latency_s: float = 0.0):
        self.lock = threading.Lock()
        self.latency_s = latency_s  # the model's answer time, after the request was admitted
        self.script: list[tuple] = []
        self.agent_script: dict[str, list[tuple]] = {}
        self.agent_latency_s: dict[str, float] = {}
        self.judge_rule: Callable[[Image.Image, Image.Image, list[Image.Image]], str] = lambda a, b, inputs: "A"
        self.requests: list[dict] = []  # answered requests
        self.throttled = 0  # 429s for a full budget
        self.throttled_by: Counter = Counter()  # "requests" | "tokens" → 429s
        self.limits = {"requests": requests_limit, "tokens": tokens_limit}
        self.window_s = window_s
        self.spent: dict[str, deque] = {"requests": deque(), "tokens": deque()}  # (time, amount)
        super().__init__()

    @property
    def base_url(self) -> str:
        return self.server.url + "/v1"

    def handle(self, handler: JsonHandler, method: str) -> None:
        if method != "POST" or not handler.path.endswith("/chat/completions"):
            return handler.send(404, {"error": {"message": "not found"}})
        body = json.loads(handler.body())
        agent = body["response_format"]["json_schema"]["name"]
        try:
            images = image_parts(body["messages"])
        except BadImage as error:
            return handler.send(400, {"error": {"message": str(error), "type": "invalid_request_error",
                                                "param": None, "code": "invalid_image_url"}})
        image_tokens = sum(IMAGE_TOKENS[detail] for _, _, detail in images)
        # OpenAI counts the prompt's tokens and the completion's maximum when the request arrives.
        tokens = len(json.dumps(text_only(body["messages"]))) // 4 + image_tokens + self.COMPLETION_TOKENS
        with self.lock:
            headers, over = self.take_budget(tokens)
            if over is None:
                self.requests.append({"agent": agent, "body": body, "auth": handler.headers.get("Authorization"),
                                      "images": [(label, image) for label, image, _ in images]})
                step = self.script.pop(0) if self.script else None
                if step is None and self.agent_script.get(agent):
                    step = self.agent_script[agent].pop(0)
            else:
                self.throttled += 1
                self.throttled_by[over] += 1
        if over is not None:
            used = self.limits[over] - int(headers[f"x-ratelimit-remaining-{over}"])
            return handler.send(429, {"error": {
                "message": f"Rate limit reached for {body['model']} on {over} per min: Limit {self.limits[over]}, "
                           f"Used {used}. Please try again in {headers[f'x-ratelimit-reset-{over}']}.",
                "type": over, "param": None, "code": "rate_limit_exceeded"}}, headers=headers)
        time.sleep(self.agent_latency_s.get(agent, self.latency_s))
        if step and step[0] == "429":
            headers = step[1] if isinstance(step[1], dict) else {"Retry-After": str(step[1])}
            return handler.send(429, {"error": {"message": "slow down", "type": "rate_limit"}}, headers=headers)
        if step and step[0] == "500":
            return handler.send(500, {"error": {"message": "boom", "type": "server_error"}})
        if step and step[0] == "garbage":
            content = "this is not json"
        elif step and step[0] == "reply":
            content = json.dumps(step[1])
        elif agent == "JudgeReply":
            content = json.dumps(self.judge_reply([image for _, image, _ in images]))
        else:
            content = json.dumps(self.default_reply(agent, body["messages"][-1]["content"]))
        prompt_tokens = TEXT_REQUEST_TOKENS + image_tokens
        handler.send(200, {
            "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": content, "refusal": None}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": self.COMPLETION_TOKENS,
                      "total_tokens": prompt_tokens + self.COMPLETION_TOKENS},
        }, headers=headers)

    def judge_reply(self, images: list[Image.Image]) -> dict:
        """The judge's structured answer: the candidates are the last two images, the inputs before."""
        *inputs, a, b = images
        choice = self.judge_rule(a, b, inputs)
        return {"continuity": choice, "prompt_adherence": choice, "defects": "tie", "preferred": choice,
                "reason": f"stand-in judge prefers {choice}"}

    def take_budget(self, tokens: int) -> tuple[dict[str, str], str | None]:
        """The x-ratelimit headers, and the budget this request is over (None: spent and answered)."""
        now = time.monotonic()
        need = {"requests": 1, "tokens": tokens}
        headers, over = {}, None
        for budget, spent in self.spent.items():
            while spent and spent[0][0] <= now - self.window_s:
                spent.popleft()
            used, freed, reset = sum(amount for _, amount in spent), 0, 0.0
            for stamp, amount in spent:  # the reset: when enough has left the window for this request
                if used - freed + need[budget] <= self.limits[budget]:
                    break
                freed += amount
                reset = stamp + self.window_s - now
            if used + need[budget] > self.limits[budget]:
                over = over or budget
            headers[f"x-ratelimit-limit-{budget}"] = str(self.limits[budget])
            headers[f"x-ratelimit-remaining-{budget}"] = str(max(0, self.limits[budget] - used))
            headers[f"x-ratelimit-reset-{budget}"] = f"{math.ceil(reset * 1000)}ms" if reset < 1 else f"{reset:.3f}s"
        if over is None:
            for budget, spent in self.spent.items():
                spent.append((now, need[budget]))
                headers[f"x-ratelimit-remaining-{budget}"] = str(int(headers[f"x-ratelimit-remaining-{budget}"])
                                                                - need[budget])
        else:
            headers[f"x-ratelimit-remaining-{over}"] = "0"
        return headers, over

    @staticmethod
    def default_reply(agent: str, user: str) -> dict:
        if agent == "CreativeDirectorReply":
            current = re.search(r"Current prompt:\n(.*?)\n\n", user, re.S)
            prompt = current.group(1) if current else user.split("\n", 1)[1].strip()
            return {"prompt": prompt + " refined", "changes": ["refined"]}
        prompt = user.split("\n", 1)[1]
        score = min(100, 60 + 15 * prompt.count(" refined"))
        return {**{d: score for d in DIMENSIONS}, "overall": score, "critique": "add lens detail",
                "missing": ["lens"]}
