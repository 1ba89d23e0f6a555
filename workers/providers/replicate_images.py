"""Image generation on Replicate through the official client.

No double spend: the prediction id is recorded in Redis under the variation's ledger key
(artifact key + attempt) right after creation, and a redelivered task polls that prediction
instead of creating another. Creations share a fleet-wide rate limit. A 429 waits for
Retry-After (else exponential backoff with jitter), 5xx and network errors get bounded retries,
a failed or flagged prediction is an ImageGenerationError (a failure record), and a prediction
over the timeout is cancelled on Replicate.
"""

from __future__ import annotations

import io
import logging
import time

import httpx
import replicate
from replicate.exceptions import ReplicateError
from tenacity import RetryCallState, retry, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from config.settings import Settings
from tasks.state import JobState, state_client
from workers.providers.adapters import image_model_adapter
from workers.providers.base import ImageGenerationError, ImageRequest
from workers.ratelimit import FleetRateLimiter

log = logging.getLogger(__name__)
TERMINAL = ("succeeded", "failed", "canceled")


class RateLimited(Exception):
    def __init__(self, retry_after: float | None):
        super().__init__(f"429 from Replicate (Retry-After: {retry_after})")
        self.retry_after = retry_after


def _raise_on_429(response: httpx.Response) -> None:
    """httpx hook: the client drops headers from its errors, so read Retry-After here."""
    if response.status_code == 429:
        header = response.headers.get("retry-after")
        try:
            retry_after = float(header) if header is not None else None
        except ValueError:
            retry_after = None
        response.read()
        raise RateLimited(retry_after)


def _transient(error: BaseException) -> bool:
    if isinstance(error, RateLimited | httpx.TransportError):
        return True
    return isinstance(error, ReplicateError) and (error.status or 0) >= 500


def _wait(state: RetryCallState) -> float:
    error = state.outcome.exception() if state.outcome else None
    if isinstance(error, RateLimited) and error.retry_after is not None:
        return error.retry_after
    return wait_exponential_jitter(multiplier=0.5, max=30)(state)


provider_retry = retry(retry=retry_if_exception(_transient), wait=_wait, stop=stop_after_attempt(5), reraise=True)


class ReplicateImageGenerator:
    name = "replicate"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.client = replicate.Client(api_token=settings.replicate_api_token.get_secret_value(),
                                       timeout=httpx.Timeout(settings.replicate_http_timeout_s),
                                       event_hooks={"response": [_raise_on_429]})
        self.limiter = FleetRateLimiter(state_client(), "replicate-predictions",
                                        settings.replicate_rate_limit, settings.replicate_rate_window_s)

    @provider_retry
    def _create(self, model: str, body: dict) -> str:
        self.limiter.acquire()
        return self.client.models.predictions.create(model=model, input=body).id

    @provider_retry
    def _get(self, prediction_id: str):
        return self.client.predictions.get(prediction_id)

    @provider_retry
    def _download(self, url: str) -> bytes:
        response = httpx.get(url, timeout=self.settings.replicate_http_timeout_s, follow_redirects=True)
        response.raise_for_status()
        return response.content

    def cancel(self, prediction_id: str) -> None:
        try:
            self.client.predictions.cancel(prediction_id)
        except (ReplicateError, httpx.HTTPError, RateLimited) as error:
            log.warning("could not cancel prediction %s: %s", prediction_id, error)

    def generate(self, request: ImageRequest, should_stop=None) -> bytes:
        model = request.model or self.settings.replicate_model
        adapter = image_model_adapter(model)
        state = JobState(request.job_id) if request.job_id else None
        prediction_id = state.prediction_id(request.ledger_key) if state and request.ledger_key else None
        if prediction_id is None:
            images = []
            for number, data in enumerate(request.input_images, start=1):
                upload = io.BytesIO(data)
                upload.name = f"input_{number}.png"  # the client uploads file objects via the files API
                images.append(upload)
            body = adapter.build_input(request.prompt, images, request.aspect_ratio, request.seed)
            created = self._create(model, body)
            if state:
                state.add_costs(request.frame or "?", predictions_created=1)
                prediction_id = state.record_prediction(request.ledger_key, created) if request.ledger_key else created
                if prediction_id != created:  # another delivery recorded first: keep one, cancel ours
                    self.cancel(created)
            else:
                prediction_id = created
        else:
            log.info("resuming prediction %s for %s", prediction_id, request.ledger_key)
        prediction = self._wait_for(prediction_id)
        output = prediction.output
        url = output[0] if isinstance(output, list) else output
        if not url:
            raise ImageGenerationError(f"prediction {prediction_id} succeeded without an output")
        return self._download(str(url))

    def _wait_for(self, prediction_id: str):
        deadline = time.monotonic() + self.settings.replicate_prediction_timeout_s
        while True:
            prediction = self._get(prediction_id)
            if prediction.status == "succeeded":
                return prediction
            if prediction.status in ("failed", "canceled"):
                raise ImageGenerationError(f"prediction {prediction_id} {prediction.status}: {prediction.error}")
            if time.monotonic() > deadline:
                self.cancel(prediction_id)
                raise ImageGenerationError(f"prediction {prediction_id} timed out after "
                                           f"{self.settings.replicate_prediction_timeout_s}s and was cancelled")
            time.sleep(self.settings.replicate_poll_interval_s)
