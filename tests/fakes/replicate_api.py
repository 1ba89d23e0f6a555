"""The parts of Replicate's predictions and files API that framefleet uses, for the official client."""

from __future__ import annotations

import email.parser
import io
import itertools
import json
import re
import threading
import time

from PIL import Image

from tests.fakes.http import JsonHandler, LocalServer


class FakeReplicate:
    """Predictions succeed after ``polls_to_finish`` polls unless told otherwise.

    - ``create_script``: consumed per creation request: ("429", retry_after) | ("500",)
    - ``fail_seeds``: predictions whose input seed is in it fail (flagged as NSFW)
    - ``never_finish``: predictions stay "processing" (for timeouts)
    - ``poll_errors``: the next N prediction GETs answer 500
    """

    def __init__(self, polls_to_finish: int = 1):
        self.lock = threading.Lock()
        self.polls_to_finish = polls_to_finish
        self.create_script: list[tuple] = []
        self.create_attempts = 0
        self.fail_seeds: set[int] = set()
        self.never_finish = False
        self.poll_errors = 0
        self.files: dict[str, bytes] = {}
        self.predictions: dict[str, dict] = {}
        self.creations: list[dict] = []  # accepted creations: {"time", "model", "input", "id"}
        self.canceled: list[str] = []
        self.downloads = 0
        self.ids = itertools.count(1)
        self.server = LocalServer(self)

    @property
    def base_url(self) -> str:
        return self.server.url

    def __enter__(self):
        self.server.__enter__()
        return self

    def __exit__(self, *exc):
        self.server.__exit__(*exc)

    def file_bytes(self, url: str) -> bytes:
        return self.files[url.rsplit("/", 1)[1]]

    def handle(self, handler: JsonHandler, method: str) -> None:
        path = handler.path.split("?")[0]
        if method == "POST" and path == "/v1/files":
            return self.create_file(handler)
        if method == "GET" and path.startswith("/files/"):
            return handler.send(200, raw=self.files[path.rsplit("/", 1)[1]], content_type="image/png")
        if method == "POST" and (m := re.fullmatch(r"/v1/models/([^/]+)/([^/]+)/predictions", path)):
            return self.create_prediction(handler, f"{m.group(1)}/{m.group(2)}")
        if method == "GET" and (m := re.fullmatch(r"/v1/predictions/([^/]+)", path)):
            return self.get_prediction(handler, m.group(1))
        if method == "POST" and (m := re.fullmatch(r"/v1/predictions/([^/]+)/cancel", path)):
            with self.lock:
                self.predictions[m.group(1)]["status"] = "canceled"
                self.canceled.append(m.group(1))
            return handler.send(200, self.predictions[m.group(1)])
        if method == "GET" and (m := re.fullmatch(r"/outputs/([^/]+)\.png", path)):
            with self.lock:
                self.downloads += 1
            return handler.send(200, raw=self.output_png(m.group(1)), content_type="image/png")
        handler.send(404, {"detail": "not found", "status": 404})

    def create_file(self, handler: JsonHandler) -> None:
        raw = handler.body()
        message = email.parser.BytesParser().parsebytes(
            f"Content-Type: {handler.headers['Content-Type']}\r\n\r\n".encode() + raw)
        part = next(p for p in message.walk() if p.get_filename())
        with self.lock:
            file_id = f"file{next(self.ids)}"
            self.files[file_id] = part.get_payload(decode=True)
        handler.send(201, {"id": file_id, "name": part.get_filename(), "content_type": part.get_content_type(),
                           "size": len(self.files[file_id]), "etag": "e", "checksums": {}, "metadata": {},
                           "created_at": "2026-01-01T00:00:00Z", "expires_at": None,
                           "urls": {"get": f"{self.base_url}/files/{file_id}"}})

    def create_prediction(self, handler: JsonHandler, model: str) -> None:
        body = json.loads(handler.body())
        with self.lock:
            self.create_attempts += 1
            step = self.create_script.pop(0) if self.create_script else None
            if step is None:
                prediction_id = f"pred{next(self.ids)}"
                prediction = {"id": prediction_id, "model": model, "version": "", "status": "starting",
                              "input": body["input"], "output": None, "logs": "", "error": None, "metrics": {},
                              "created_at": "2026-01-01T00:00:00Z", "polls": 0,
                              "urls": {"get": f"{self.base_url}/v1/predictions/{prediction_id}",
                                       "cancel": f"{self.base_url}/v1/predictions/{prediction_id}/cancel"}}
                self.predictions[prediction_id] = prediction
                self.creations.append({"time": time.time(), "model": model, "input": body["input"],
                                       "id": prediction_id})
        if step and step[0] == "429":
            return handler.send(429, {"detail": "Request was throttled.", "status": 429},
                                headers={"Retry-After": str(step[1])})
        if step and step[0] == "500":
            return handler.send(500, {"detail": "internal error", "status": 500})
        handler.send(201, self.public(prediction))

    def get_prediction(self, handler: JsonHandler, prediction_id: str) -> None:
        with self.lock:
            if self.poll_errors > 0:
                self.poll_errors -= 1
                error = True
            else:
                error = False
                prediction = self.predictions[prediction_id]
                prediction["polls"] += 1
                if prediction["status"] in ("starting", "processing") and not self.never_finish:
                    if prediction["polls"] >= self.polls_to_finish:
                        if prediction["input"].get("seed") in self.fail_seeds:
                            prediction.update(status="failed", error="NSFW content detected")
                        else:
                            prediction.update(status="succeeded", output=[f"{self.base_url}/outputs/{prediction_id}.png"])
                    else:
                        prediction["status"] = "processing"
        if error:
            return handler.send(500, {"detail": "internal error", "status": 500})
        handler.send(200, self.public(prediction))

    @staticmethod
    def public(prediction: dict) -> dict:
        return {k: v for k, v in prediction.items() if k != "polls"}

    def output_png(self, prediction_id: str) -> bytes:
        number = int(prediction_id.removeprefix("pred"))
        out = io.BytesIO()
        Image.new("RGB", (64, 36), ((number * 47) % 256, (number * 91) % 256, 120)).save(out, format="PNG")
        return out.getvalue()
