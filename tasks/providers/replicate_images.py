"""Image generation on Replicate through the official client, within the account's budgets.

A model's predictions are created on the model itself, or on the account's deployment of it
(``replicate_deployment``, adapters.py): warm instances instead of a public model's cold boots.
Budgets (``replicate_rate_limit`` creations and ``replicate_other_rate_limit`` other calls per
``replicate_rate_window_s``) are taken from fleet-wide limiters in Redis before every API call; a
429 pauses the whole fleet for as long as Replicate asked, at most ``provider_max_pause_s``. Every
wait for a slot is bounded: a creation's by the generation's deadline
(``replicate_prediction_timeout_s``) and its ``should_stop``, any other call's by
``replicate_http_timeout_s``. Nothing polls per prediction: the
account's one active watcher (replicate_watcher.py) lists predictions and publishes their status
in Redis, where waiting tasks block. Input images are uploaded once per job (the file URL is
cached in Redis) or, when small, sent inline as data URLs. Creations carry the deadline in a
``Cancel-After`` header, so Replicate cancels a prediction even if every worker died.

No double spend: the prediction id is recorded in Redis under the variation's ledger key
(artifact key + attempt) right after creation, and a redelivered task waits for that prediction
instead of creating another. 5xx and network errors get bounded retries, a failed or flagged
prediction is an ImageGenerationError (a failure record), a prediction over the timeout or one
whose caller asks to stop is cancelled on Replicate.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import re
import time

import httpx
import replicate
from framefleet.config.settings import Settings
from framefleet.tasks.job.keys import JobKeys
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.redis import state_client
from framefleet.tasks.providers.adapters import image_model_adapter, replicate_deployment
from framefleet.tasks.providers.base import GenerationStopped, ImageGenerationError, ImageRequest, StopCheck
from framefleet.tasks.providers.ratelimit import (
    DEFAULT_PAUSE_S,
    FleetRateLimiter,
    RateLimitDeadline,
    WaitStopped,
    count_request,
    outcome,
    requested_pause,
)
from framefleet.tasks.providers.replicate_watcher import (
    TERMINAL,
    PredictionBoard,
    PredictionWatcher,
    account_id,
    api_time,
)
from replicate.exceptions import ReplicateError
from tenacity import RetryCallState, retry, retry_if_exception, stop_after_attempt, wait_exponential_jitter

log = logging.getLogger(__name__)
UPLOAD_LOCK_S = 120


class RateLimited(ImageGenerationError):
    """A 429; retried (after the fleet-wide pause) a few times, then a failure record."""

    def __init__(self, retry_after: float):
        super().__init__(f"429 from Replicate (pause {retry_after:g}s)")
        self.retry_after = retry_after


def retry_after(response: httpx.Response) -> float:
    """The pause a 429 asks for: Retry-After, else the body's "resets in ~30s", else
    DEFAULT_PAUSE_S (unusable values are skipped and logged once; the limiter caps)."""
    seconds = requested_pause(response.headers.get("retry-after"), "Replicate Retry-After")
    if seconds is None and (found := re.search(r"resets in ~?(\d+(?:\.\d+)?)s", response.text)):
        seconds = requested_pause(found.group(1), "Replicate 'resets in'")
    return DEFAULT_PAUSE_S if seconds is None else seconds


class _RaiseOn429(httpx.BaseTransport):
    """Under the official client's own retry layer, which sleeps out any all-digit Retry-After on
    GETs (uncapped, up to 10 times, outside the fleet's limiter): a 429 becomes RateLimited here
    (the client drops headers from its errors, so they are read here too), and a 503/504 loses its
    Retry-After, so the client's bounded backoff applies."""

    def __init__(self, inner: httpx.BaseTransport):
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = self.inner.handle_request(request)
        except httpx.TransportError:
            count_request("replicate", "error")
            raise
        count_request("replicate", outcome(response.status_code))  # every API call goes through here
        if response.status_code == 429:
            try:
                response.read()
            finally:
                response.close()
            raise RateLimited(retry_after(response))
        if response.status_code in (503, 504):
            response.headers.pop("retry-after", None)
        return response

    def close(self) -> None:
        self.inner.close()


def _transient(error: BaseException) -> bool:
    if isinstance(error, RateLimited | httpx.TransportError):
        return True
    return isinstance(error, ReplicateError) and (error.status or 0) >= 500


def _wait(state: RetryCallState) -> float:
    error = state.outcome.exception() if state.outcome else None
    if isinstance(error, RateLimited):
        return 0.0  # the fleet-wide pause set on the 429 makes the next acquire wait
    return wait_exponential_jitter(multiplier=0.5, max=30)(state)


provider_retry = retry(retry=retry_if_exception(_transient), wait=_wait, stop=stop_after_attempt(5), reraise=True)


def _mime_type(data: bytes) -> str:
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/png"


class ReplicateImageGenerator:
    name = "replicate"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.client = replicate.Client(api_token=settings.replicate_api_token.get_secret_value(),
                                       timeout=httpx.Timeout(settings.replicate_http_timeout_s),
                                       transport=_RaiseOn429(httpx.HTTPTransport()),
                                       event_hooks={"request": [self._add_deadline]})
        redis_client, account = state_client(), account_id(settings)
        window, max_pause = settings.replicate_rate_window_s, settings.provider_max_pause_s
        self.creations = FleetRateLimiter(redis_client, f"replicate:{account}:creations",
                                          settings.replicate_rate_limit, window, max_pause_s=max_pause)
        self.other_calls = FleetRateLimiter(redis_client, f"replicate:{account}:other",
                                            settings.replicate_other_rate_limit, window, max_pause_s=max_pause)
        self.board = PredictionBoard(redis_client, account)
        self.watcher = PredictionWatcher(settings, self.board, self._list_page, self._fetch)

    def close(self) -> None:
        self.watcher.stop()

    def _add_deadline(self, request: httpx.Request) -> None:
        """httpx hook: Replicate cancels the prediction itself at the deadline (status canceled, or
        aborted if it never started), even when no worker is left to do it."""
        if request.method == "POST" and request.url.path.endswith("/predictions"):
            request.headers["Cancel-After"] = f"{max(1, round(self.settings.replicate_prediction_timeout_s))}s"

    # API calls, each within its budget --------------------------------------------------------
    @staticmethod
    def _slot(limiter: FleetRateLimiter, deadline: float, should_stop: StopCheck | None = None) -> float:
        """A slot by ``deadline`` (time.monotonic()); a stop request is GenerationStopped, no slot
        in time an ImageGenerationError (a failure record)."""
        try:
            return limiter.acquire(deadline=deadline, should_stop=should_stop)
        except WaitStopped as stop:
            raise GenerationStopped(stop.reason) from None
        except RateLimitDeadline as error:
            raise ImageGenerationError(str(error)) from None

    def _call(self, fn, *args, until: float | None = None, **kwargs):
        """One non-creation API call; its waits for a slot (retries included) end by ``until``, by
        default one HTTP timeout from now."""
        if until is None:
            until = time.monotonic() + self.settings.replicate_http_timeout_s
        return self._call_by(until, fn, *args, **kwargs)

    @provider_retry
    def _call_by(self, deadline: float, fn, *args, **kwargs):
        self._slot(self.other_calls, deadline)
        try:
            return fn(*args, **kwargs)
        except RateLimited as error:
            self.other_calls.pause(error.retry_after)
            raise

    @provider_retry
    def _create(self, model: str, deployment: str | None, body: dict, on_wait, deadline: float,
                should_stop: StopCheck | None) -> object:
        """A prediction of the public ``model``, or on its ``deployment`` (the account's own warm
        instances): the same creation budget, and the same predictions API after it."""
        waited = self._slot(self.creations, deadline, should_stop)
        if waited > 0:
            on_wait(waited)
        try:
            if deployment:
                return self.client.deployments.predictions.create(deployment=deployment, input=body)
            return self.client.models.predictions.create(model=model, input=body)
        except RateLimited as error:
            self.creations.pause(error.retry_after)
            raise

    def _list_page(self, cursor: str | None):
        page = self._call(self.client.predictions.list, ... if cursor is None else cursor)
        return page.results, page.next

    def _fetch(self, prediction_id: str):
        try:
            return self._call(self.client.predictions.get, prediction_id)
        except ReplicateError as error:
            if error.status == 404:
                return None
            raise

    @provider_retry
    def _download(self, url: str) -> bytes:
        """Output files come from Replicate's file delivery host, outside the API budgets."""
        response = httpx.get(url, timeout=self.settings.replicate_http_timeout_s, follow_redirects=True)
        response.raise_for_status()
        return response.content

    def cancel(self, prediction_id: str) -> None:
        self.board.untrack(prediction_id)
        try:
            self._call(self.client.predictions.cancel, prediction_id)
        except (ReplicateError, httpx.HTTPError, ImageGenerationError) as error:
            log.warning("could not cancel prediction %s: %s", prediction_id, error)

    # input images -------------------------------------------------------------------------------
    def _input_url(self, job_id: str | None, data: bytes, deadline: float, should_stop: StopCheck | None) -> str:
        """A data URL for a small image; else the files API URL, uploaded once per job: the first
        caller uploads under a short lock, the others wait for its URL (until the lock's time or
        ``deadline`` is up, or ``should_stop`` gives a reason)."""
        if len(data) <= self.settings.replicate_data_url_max_bytes:
            return f"data:{_mime_type(data)};base64,{base64.b64encode(data).decode()}"
        if job_id is None:
            return self._upload(data, deadline)[0]
        r = self.board.r
        digest = hashlib.sha256(data).hexdigest()
        url_key, lock_key = JobKeys(job_id).replicate_file(digest), JobKeys(job_id).replicate_upload(digest)
        deadline = min(deadline, time.monotonic() + UPLOAD_LOCK_S)
        while (url := r.get(url_key)) is None:
            if r.set(lock_key, "1", nx=True, ex=UPLOAD_LOCK_S):
                try:
                    if (url := r.get(url_key)) is not None:  # uploaded between our read and the lock
                        return url
                    url, expires_at = self._upload(data, deadline)
                    # Reused until the job's state expires, or shortly before Replicate deletes the file.
                    ttl = self.settings.job_ttl_s
                    if expires_at:
                        ttl = min(ttl, int(api_time(expires_at) - time.time()) - 60)
                    if ttl > 0:
                        r.set(url_key, url, ex=ttl)
                    return url
                finally:
                    r.delete(lock_key)
            if should_stop and (reason := should_stop()):
                raise GenerationStopped(reason)
            if time.monotonic() > deadline:
                raise ImageGenerationError(f"input image upload for job {job_id} did not finish in time "
                                           f"(lock {UPLOAD_LOCK_S}s, generation deadline)")
            time.sleep(0.1)
        return url

    def _upload(self, data: bytes, deadline: float) -> tuple[str, str | None]:
        """The file's URL and when Replicate deletes it."""
        extension = _mime_type(data).split("/")[1]
        upload = self._call(self.client.files.create, io.BytesIO(data), filename=f"input.{extension}",
                            content_type=_mime_type(data), until=deadline)
        return upload.urls["get"], upload.expires_at

    # generation ---------------------------------------------------------------------------------
    def generate(self, request: ImageRequest, should_stop: StopCheck | None = None) -> bytes:
        model = request.model or self.settings.replicate_model
        adapter, deployment = image_model_adapter(model), replicate_deployment(model, self.settings)
        job = Job(request.job_id) if request.job_id else None
        frame = request.frame or "?"
        # Uploads and the wait for a creation slot end by the same deadline as a prediction.
        deadline = time.monotonic() + self.settings.replicate_prediction_timeout_s
        self.watcher.ensure_started()
        prediction_id = job.ledger.prediction_id(request.ledger_key) if job and request.ledger_key else None
        if prediction_id is None:
            if should_stop and (reason := should_stop()):
                raise GenerationStopped(reason)
            images = [self._input_url(request.job_id, data, deadline, should_stop) for data in request.input_images]
            body = adapter.build_input(request.prompt, images, request.aspect_ratio, request.seed)

            def count_wait(seconds: float) -> None:
                if job:
                    job.ledger.add_costs(frame, creation_waits=1, creation_wait_ms=round(seconds * 1000))

            created = self._create(model, deployment, body, count_wait, deadline, should_stop)
            self.board.track(created.id, created.created_at)
            prediction_id = created.id
            if job:
                job.ledger.add_costs(frame, self.settings.prediction_usd(model), predictions_created=1)
                if request.ledger_key:
                    prediction_id = job.ledger.record_prediction(request.ledger_key, created.id)
                if prediction_id != created.id:  # another delivery recorded first: keep one, cancel ours
                    self.cancel(created.id)
        else:
            log.info("resuming prediction %s for %s", prediction_id, request.ledger_key)
            self._resume(prediction_id)
        published = self._wait_for(prediction_id, should_stop)
        output = published["output"]
        url = output[0] if isinstance(output, list) and output else output
        if not url:
            raise ImageGenerationError(f"prediction {prediction_id} succeeded without an output")
        return self._download(str(url))

    def _resume(self, prediction_id: str) -> None:
        """A redelivered task: one GET tells the current status (the watcher may never have seen it)."""
        prediction = self._fetch(prediction_id)
        if prediction is None:
            raise ImageGenerationError(f"prediction {prediction_id} is unknown to Replicate")
        self.board.publish(prediction.id, prediction.status, prediction.output,
                           str(prediction.error) if prediction.error else None)
        if prediction.status not in TERMINAL:
            self.board.track(prediction.id, prediction.created_at)

    def _wait_for(self, prediction_id: str, should_stop: StopCheck | None) -> dict:
        """Wait on the watcher's published status (Redis only); check ``should_stop`` every second."""
        deadline = time.monotonic() + self.settings.replicate_prediction_timeout_s
        while True:
            published = self.board.status(prediction_id)
            status = published["status"] if published else "starting"
            if status == "succeeded":
                return published
            if status in TERMINAL:
                raise ImageGenerationError(f"prediction {prediction_id} {status}: {published['error']}")
            if should_stop and (reason := should_stop()):
                self.cancel(prediction_id)
                raise GenerationStopped(reason)
            if time.monotonic() > deadline:
                self.cancel(prediction_id)
                raise ImageGenerationError(f"prediction {prediction_id} timed out after "
                                           f"{self.settings.replicate_prediction_timeout_s}s and was cancelled")
            self.board.wait(prediction_id, min(1.0, deadline - time.monotonic()))
