"""Contract checks for the whole test session: what the fleet hands a main app (progress events,
completion callbacks, manifests) must match the JSON Schemas `framefleet schema` prints."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import jsonschema
import redis
from framefleet.workers.cli import contract_schema

CALLBACK_LISTS = ("mainapp:callbacks",)  # where the tests' main apps record what they receive


def validator(contract: str, kind: str | None = None) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(contract_schema(contract, kind))


def check(contract: str, document, kind: str | None = None) -> None:
    """Raise jsonschema.ValidationError naming the first mismatch."""
    validator(contract, kind).validate(document)


class ContractRecorder:
    """Collects every message on the job event channels of one Redis while the session runs."""

    def __init__(self, url: str):
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.events: list[dict] = []
        self._pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="contract-recorder", daemon=True)

    def start(self) -> "ContractRecorder":
        self._pubsub.psubscribe("framefleet:job:*:events")
        self._thread.start()
        return self

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.2)
            except (redis.ConnectionError, ValueError):  # the server is being restarted by a test
                self._stop.wait(0.2)
                continue
            if message:
                self.events.append(json.loads(message["data"]))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        callbacks = []
        for name in CALLBACK_LISTS:
            try:
                callbacks += [json.loads(item) for item in self.client.lrange(name, 0, -1)]
            except redis.RedisError:
                pass
        self.callbacks = callbacks
        self._pubsub.close()
        self.client.close()

    def check(self, root: Path) -> None:
        events, callbacks, manifests = validator("event"), validator("callback"), validator("manifest")
        for event in self.events:
            events.validate(event)
        for callback in self.callbacks:
            callbacks.validate(callback)
        for path in root.rglob("manifest.json"):
            manifests.validate(json.loads(path.read_text()))
