"""The parts of OpenAI's chat-completions API that framefleet uses, for the official client."""

from __future__ import annotations

import json
import re
import threading

from tests.fakes.http import JsonHandler, LocalServer

DIMENSIONS = ("completeness", "specificity", "professionalism", "cinematography", "brand_alignment")


class FakeOpenAI:
    """Scripted replies: ``script`` is consumed first (one entry per request), then the defaults.

    Entries: ("429", retry_after_s) | ("500",) | ("garbage",) | ("reply", dict).
    Default Creative Director: appends " refined" to the current prompt. Default Prompt Engineer:
    scores 60 + 15 per " refined" in the prompt, so a frame reaches 90 on the third round.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.script: list[tuple] = []
        self.requests: list[dict] = []
        self.server = LocalServer(self)

    @property
    def base_url(self) -> str:
        return self.server.url + "/v1"

    def __enter__(self):
        self.server.__enter__()
        return self

    def __exit__(self, *exc):
        self.server.__exit__(*exc)

    def handle(self, handler: JsonHandler, method: str) -> None:
        if method != "POST" or not handler.path.endswith("/chat/completions"):
            return handler.send(404, {"error": {"message": "not found"}})
        body = json.loads(handler.body())
        agent = body["response_format"]["json_schema"]["name"]
        with self.lock:
            self.requests.append({"agent": agent, "body": body, "auth": handler.headers.get("Authorization")})
            step = self.script.pop(0) if self.script else None
        if step and step[0] == "429":
            return handler.send(429, {"error": {"message": "slow down", "type": "rate_limit"}},
                                headers={"Retry-After": str(step[1])})
        if step and step[0] == "500":
            return handler.send(500, {"error": {"message": "boom", "type": "server_error"}})
        if step and step[0] == "garbage":
            content = "this is not json"
        elif step and step[0] == "reply":
            content = json.dumps(step[1])
        else:
            content = json.dumps(self.default_reply(agent, body["messages"][-1]["content"]))
        handler.send(200, {
            "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": content, "refusal": None}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
        })

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
