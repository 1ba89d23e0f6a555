"""The parts of Replicate's API that framefleet uses, for the official client, with the account's
budgets enforced: ``creation_limit`` creations and ``other_limit`` other API calls (gets, lists,
cancels, file uploads) per ``window_s`` sliding window (600 and 3000 per 60 s on the real service;
a ``scale`` of 0.1 gives 60 and 300 per 6 s, the same per-second rates in a tenth of the time).
Over a budget: 429 with Replicate's documented body and a Retry-After header.

Predictions are created on a public model (``POST /v1/models/{owner}/{name}/predictions``) or on
one of the account's ``deployments`` (``POST /v1/deployments/{owner}/{name}/predictions``; the
prediction names its ``deployment``); both spend the creation budget, and their predictions are
listed, fetched and cancelled alike. Predictions run on a clock: ``starting`` for ``start_s``,
``processing`` for ``run_s``, then ``succeeded`` (or ``failed`` for a seed in ``fail_seeds``).
``Cancel-After`` on a creation is honoured: past it, a prediction is ``aborted`` (never started)
or ``canceled``. ``GET /v1/predictions`` lists newest first, ``page_size`` per page, with a cursor
to the next page.
Output downloads (Replicate's file delivery host) are outside the budgets.
"""

from __future__ import annotations

import base64
import email.parser
import io
import itertools
import json
import math
import re
import threading
import time
from collections import Counter, deque
from datetime import datetime, timezone

from PIL import Image

from tests.fakes.http import JsonHandler, StandIn

DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")


def parse_duration(text: str) -> float:
    return sum(float(number) * UNITS[unit] for number, unit in DURATION.findall(text))


class SlidingWindow:
    def __init__(self, limit: int, window_s: float):
        self.limit, self.window_s, self.times = limit, window_s, deque()

    def take(self, now: float) -> float:
        """0 when the call is within budget (and counted), else seconds until it would be."""
        while self.times and self.times[0] <= now - self.window_s:
            self.times.popleft()
        if len(self.times) >= self.limit:
            return self.times[0] + self.window_s - now
        self.times.append(now)
        return 0.0


class FakeReplicate(StandIn):
    """``create_script`` is consumed per creation request: ("429", retry_after) | ("429", retry_after,
    resets_in) | ("500",). ``throttle(endpoint, ...)`` makes the next call to any endpoint a 429.
    A scripted 429 has Replicate's body ("... resets in ~{resets_in}s.", ``resets_in`` defaulting to
    ``retry_after``) and ``Retry-After: {retry_after}`` (left out when None); both are sent as given,
    so a test can send "inf" or "1e9". ``never_finish``: predictions stay "processing".
    ``hidden_from_list``: ids the listings leave out."""

    def __init__(self, start_s: float = 0.02, run_s: float = 0.05, creation_limit: int = 600,
                 other_limit: int = 3000, window_s: float = 60.0, page_size: int = 100):
        self.lock = threading.Lock()
        self.start_s, self.run_s, self.page_size = start_s, run_s, page_size
        self.budgets = {"creation": SlidingWindow(creation_limit, window_s),
                        "other": SlidingWindow(other_limit, window_s)}
        self.create_script: list[tuple] = []
        self.create_attempts = 0
        self.fail_seeds: set[int] = set()
        self.never_finish = False
        self.hidden_from_list: set[str] = set()
        self.files: dict[str, bytes] = {}
        self.deployments: dict[str, str] = {}  # the account's deployments: "owner/name" → the model it runs
        self.predictions: dict[str, dict] = {}
        self.creations: list[dict] = []  # accepted creations: {"time", "model", "input", "id"}
        self.canceled: list[str] = []
        self.downloads: Counter = Counter()  # prediction id → downloads of its output
        self.calls: list[tuple[float, str]] = []  # (time, endpoint) of every API call, throttled ones too
        self.throttled: Counter = Counter()  # endpoint → 429s
        self.scripted_errors: dict[str, list[tuple]] = {}  # endpoint → (retry_after, resets_in, status) still to send
        self.ids = itertools.count(1)
        super().__init__()

    @classmethod
    def scaled(cls, scale: float, **kwargs) -> "FakeReplicate":
        """The real budgets and page size in ``scale`` of the time (same rates, shorter window)."""
        return cls(creation_limit=round(600 * scale), other_limit=round(3000 * scale), window_s=60.0 * scale,
                   page_size=max(1, round(100 * scale)), **kwargs)

    @property
    def base_url(self) -> str:
        return self.server.url

    def throttle(self, endpoint: str, retry_after, resets_in=..., times: int = 1, status: int = 429) -> None:
        """The next ``times`` calls to ``endpoint`` ("create", "list", "get", "cancel", "files") get
        a 429 with these values (or a ``status`` 503 with that Retry-After), before any budget is spent."""
        with self.lock:
            self.scripted_errors.setdefault(endpoint, []).extend(
                [(retry_after, retry_after if resets_in is ... else resets_in, status)] * times)

    @staticmethod
    def send_scripted_error(handler: JsonHandler, retry_after, resets_in, status: int = 429) -> None:
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        if status != 429:
            return handler.send(status, {"detail": "Service Unavailable", "status": status}, headers=headers)
        detail = f"Request was throttled. Your rate limit resets in ~{resets_in}s."
        handler.send(429, {"detail": detail, "status": 429}, headers=headers)

    # what tests read ------------------------------------------------------------------------------
    def file_bytes(self, url: str) -> bytes:
        if url.startswith("data:"):
            return base64.b64decode(url.split(",", 1)[1])
        return self.files[url.rsplit("/", 1)[1]]

    def call_counts(self) -> Counter:
        with self.lock:
            return Counter(endpoint for _, endpoint in self.calls)

    def peak_in_flight(self) -> int:
        """Most predictions running (created, not yet ended) at one time."""
        with self.lock:
            events = []
            for prediction in self.predictions.values():
                events.append((prediction["created"], 1))
                events.append((prediction.get("ended", math.inf), -1))
        peak = running = 0
        for _, step in sorted(events):
            running += step
            peak = max(peak, running)
        return peak

    # the API --------------------------------------------------------------------------------------
    def handle(self, handler: JsonHandler, method: str) -> None:
        path = handler.path.split("?")[0]
        if method == "GET" and path.startswith("/files/"):
            return handler.send(200, raw=self.files[path.rsplit("/", 1)[1]], content_type="image/png")
        if method == "GET" and (m := re.fullmatch(r"/outputs/([^/]+)\.png", path)):
            with self.lock:
                self.downloads[m.group(1)] += 1
            return handler.send(200, raw=self.output_png(m.group(1)), content_type="image/png")
        routes = [
            ("POST", r"/v1/files", "files", lambda m: self.create_file(handler)),
            ("POST", r"/v1/models/([^/]+)/([^/]+)/predictions", "create",
             lambda m: self.create_prediction(handler, f"{m.group(1)}/{m.group(2)}")),
            ("POST", r"/v1/deployments/([^/]+)/([^/]+)/predictions", "create",
             lambda m: self.create_deployment_prediction(handler, f"{m.group(1)}/{m.group(2)}")),
            ("GET", r"/v1/predictions", "list", lambda m: self.list_predictions(handler)),
            ("GET", r"/v1/predictions/([^/]+)", "get", lambda m: self.get_prediction(handler, m.group(1))),
            ("POST", r"/v1/predictions/([^/]+)/cancel", "cancel",
             lambda m: self.cancel_prediction(handler, m.group(1))),
        ]
        for route_method, pattern, endpoint, answer in routes:
            if method == route_method and (m := re.fullmatch(pattern, path)):
                if (scripted := self.next_scripted_error(endpoint)) is not None:
                    return self.send_scripted_error(handler, *scripted)
                if (retry_after := self.take_budget(endpoint)) > 0:
                    seconds = math.ceil(retry_after)
                    detail = f"Request was throttled. Your rate limit resets in ~{seconds}s."
                    return handler.send(429, {"detail": detail, "status": 429}, headers={"Retry-After": str(seconds)})
                return answer(m)
        handler.send(404, {"detail": "not found", "status": 404})

    def next_scripted_error(self, endpoint: str) -> tuple | None:
        with self.lock:
            if not self.scripted_errors.get(endpoint):
                return None
            self.calls.append((time.time(), endpoint))
            step = self.scripted_errors[endpoint].pop(0)
            if step[2] == 429:
                self.throttled[endpoint] += 1
            return step

    def take_budget(self, endpoint: str) -> float:
        now = time.monotonic()
        with self.lock:
            self.calls.append((time.time(), endpoint))
            wait = self.budgets["creation" if endpoint == "create" else "other"].take(now)
            if wait > 0:
                self.throttled[endpoint] += 1
            return wait

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
                           "created_at": iso(time.time()), "expires_at": iso(time.time() + 86400),
                           "urls": {"get": f"{self.base_url}/files/{file_id}"}})

    def create_deployment_prediction(self, handler: JsonHandler, deployment: str) -> None:
        """``POST /v1/deployments/{owner}/{name}/predictions``: a prediction of the model the
        deployment runs, named in its ``deployment`` field; 404 for a deployment the account lacks."""
        if deployment not in self.deployments:
            return handler.send(404, {"detail": "Not found.", "status": 404})
        self.create_prediction(handler, self.deployments[deployment], deployment)

    def create_prediction(self, handler: JsonHandler, model: str, deployment: str | None = None) -> None:
        body = json.loads(handler.body())
        cancel_after = handler.headers.get("Cancel-After")
        with self.lock:
            self.create_attempts += 1
            step = self.create_script.pop(0) if self.create_script else None
            if step is None:
                prediction_id = f"pred{next(self.ids)}"
                now = time.time()
                prediction = {"id": prediction_id, "model": model, "version": "", "deployment": deployment,
                              "status": "starting",
                              "input": body["input"], "output": None, "logs": "", "error": None, "metrics": {},
                              "created_at": iso(now),
                              "created": now, "cancel_after": parse_duration(cancel_after) if cancel_after else None,
                              "urls": {"get": f"{self.base_url}/v1/predictions/{prediction_id}",
                                       "cancel": f"{self.base_url}/v1/predictions/{prediction_id}/cancel"}}
                self.predictions[prediction_id] = prediction
                self.creations.append({"time": now, "model": model, "deployment": deployment, "input": body["input"],
                                       "id": prediction_id, "cancel_after": prediction["cancel_after"]})
        if step and step[0] == "429":
            return self.send_scripted_error(handler, step[1], step[2] if len(step) > 2 else step[1])
        if step and step[0] == "500":
            return handler.send(500, {"detail": "internal error", "status": 500})
        handler.send(201, self.public(prediction))

    def advance(self, prediction: dict, now: float) -> None:
        """Move a prediction along its clock (called under the lock)."""
        if prediction["status"] not in ("starting", "processing"):
            return
        age = now - prediction["created"]
        if prediction["cancel_after"] is not None and age >= prediction["cancel_after"]:
            started = age >= self.start_s
            prediction.update(status="canceled" if started else "aborted",
                              ended=prediction["created"] + prediction["cancel_after"])
        elif self.never_finish or age < self.start_s:
            prediction["status"] = "processing" if age >= self.start_s else "starting"
        elif age < self.start_s + self.run_s:
            prediction["status"] = "processing"
        elif prediction["input"].get("seed") in self.fail_seeds:
            prediction.update(status="failed", error="NSFW content detected",
                              ended=prediction["created"] + self.start_s + self.run_s)
        else:
            prediction.update(status="succeeded", output=[f"{self.base_url}/outputs/{prediction['id']}.png"],
                              ended=prediction["created"] + self.start_s + self.run_s)

    def get_prediction(self, handler: JsonHandler, prediction_id: str) -> None:
        with self.lock:
            prediction = self.predictions.get(prediction_id)
            if prediction is not None:
                self.advance(prediction, time.time())
                answer = self.public(prediction)
        if prediction is None:
            return handler.send(404, {"detail": "Not found.", "status": 404})
        handler.send(200, answer)

    def list_predictions(self, handler: JsonHandler) -> None:
        cursor = re.search(r"cursor=(\d+)", handler.path)
        offset = int(cursor.group(1)) if cursor else 0
        now = time.time()
        with self.lock:
            newest_first = [p for p in reversed(self.predictions.values()) if p["id"] not in self.hidden_from_list]
            page = newest_first[offset:offset + self.page_size]
            for prediction in page:
                self.advance(prediction, now)
            results = [self.public(p) for p in page]
        more = offset + self.page_size < len(newest_first)
        following = f"{self.base_url}/v1/predictions?cursor={offset + self.page_size}" if more else None
        handler.send(200, {"previous": None, "results": results, "next": following})

    def cancel_prediction(self, handler: JsonHandler, prediction_id: str) -> None:
        with self.lock:
            prediction = self.predictions[prediction_id]
            self.advance(prediction, time.time())
            if prediction["status"] in ("starting", "processing"):
                prediction.update(status="canceled", ended=time.time())
            self.canceled.append(prediction_id)
            answer = self.public(prediction)
        handler.send(200, answer)

    @staticmethod
    def public(prediction: dict) -> dict:
        return {k: v for k, v in prediction.items() if k not in ("created", "ended", "cancel_after")}

    def output_png(self, prediction_id: str) -> bytes:
        number = int(prediction_id.removeprefix("pred"))
        out = io.BytesIO()
        Image.new("RGB", (64, 36), ((number * 47) % 256, (number * 91) % 256, 120)).save(out, format="PNG")
        return out.getvalue()
