"""Hostile and bad input on a real fleet: refused before anything is written or enqueued."""

from __future__ import annotations

import io
import json
import time

import pytest
from framefleet.tasks.artifacts.store import open_store
from framefleet.tasks.job.errors import JobExists
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.requests import RequestError
from framefleet.workers.client import _send_and_wait, submit_job
from PIL import Image

from tests.fakes.http import LocalServer
from tests.helpers import png_bytes, run_job, storyboard_request, unique_id

pytestmark = pytest.mark.integration


class ImageHost:
    """Serves /ref.jpg (an EXIF-rotated JPEG), /big.png (over the byte cap) and /moved (a redirect)."""

    def __init__(self):
        exif = Image.Exif()
        exif[0x0112] = 6
        out = io.BytesIO()
        Image.new("RGB", (40, 20), (200, 100, 0)).save(out, format="JPEG", exif=exif.tobytes())
        self.jpeg = out.getvalue()
        self.server = LocalServer(self)

    def handle(self, handler, method):
        if handler.path == "/ref.jpg":
            return handler.send(200, raw=self.jpeg, content_type="image/jpeg")
        if handler.path == "/big.png":
            return handler.send(200, raw=b"\0" * 300_000, content_type="image/png")
        if handler.path == "/moved":
            return handler.send(302, {}, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        handler.send(404, {})


@pytest.fixture(scope="module")
def env(tmp_path_factory, start_fleet):
    root = tmp_path_factory.mktemp("artifacts-hostile")
    host = ImageHost()
    with host.server:
        start_fleet({"FRAMEFLEET_STORE_URL": f"file://{root}", "FRAMEFLEET_MAX_IMAGE_BYTES": "200000",
                     "FRAMEFLEET_REFERENCE_URL_ALLOWED_HOSTS": '["localhost"]'})
        yield open_store(f"file://{root}"), host


def refused(celery_app, store, request: dict, field: str, message: str = "", kind: str = "storyboard") -> None:
    with pytest.raises(RequestError, match=f"{field}: .*{message}"):
        submit_job(celery_app, kind, request)
    nothing_written(store, request["job_id"])


def nothing_written(store, job_id: str) -> None:
    """No job state of any kind in Redis, nothing in the store."""
    assert not Job(job_id).exists()
    assert Job(job_id).r.keys(f"framefleet:job:{job_id}:*") == []
    assert store.list(f"jobs/{job_id}") == []


@pytest.mark.parametrize("url, message", [
    ("http://169.254.169.254/latest/meta-data/iam", "non-public address"),
    ("http://10.0.0.7/ref.png", "non-public address"),
    ("file:///etc/passwd", "only artifact-store keys or http"),
])
def test_ssrf_targets_are_refused(celery_app, env, url, message):
    store, _ = env
    refused(celery_app, store, storyboard_request(unique_id("ssrf"), 1, reference_image=url), "reference_image",
            message)


def test_loopback_by_address_is_refused_but_an_allowed_host_is_fetched(celery_app, env):
    store, host = env
    port = host.server.server_address[1]
    refused(celery_app, store, storyboard_request(unique_id("loop"), 1,
                                                  reference_image=f"http://127.0.0.1:{port}/ref.jpg"),
            "reference_image", "non-public address")
    refused(celery_app, store, storyboard_request(unique_id("redirect"), 1,
                                                  reference_image=f"http://localhost:{port}/moved"),
            "reference_image", "HTTP 302")
    refused(celery_app, store, storyboard_request(unique_id("big"), 1,
                                                  reference_image=f"http://localhost:{port}/big.png"),
            "reference_image", "more than 200000 bytes")
    job_id = unique_id("fetched")
    status, manifest = run_job(celery_app, "storyboard",
                               storyboard_request(job_id, 1, reference_image=f"http://localhost:{port}/ref.jpg"), store)
    assert status.outcome == "succeeded"
    stored = Image.open(io.BytesIO(store.get(f"jobs/{job_id}/inputs/reference.png")))
    assert stored.format == "PNG" and stored.size == (20, 40)  # EXIF orientation applied
    assert manifest["frames"][0]["inputs"] == [f"jobs/{job_id}/inputs/reference.png"]


def test_a_store_key_that_is_not_an_image_is_refused(celery_app, env):
    store, _ = env
    job_id = unique_id("notimg")
    store.put(f"uploads/{job_id}/notes.png", b"just text")
    refused(celery_app, store, storyboard_request(job_id, 1, reference_image=f"uploads/{job_id}/notes.png"),
            "reference_image", "not a readable image")


def test_a_pickled_task_message_is_refused(celery_app, env):
    store, _ = env
    job_id = unique_id("pickle")
    celery_app.send_task("framefleet.storyboard.create", args=[storyboard_request(job_id, 1)], serializer="pickle")
    ok_id = unique_id("after-pickle")
    run_job(celery_app, "storyboard", storyboard_request(ok_id, 1), store)  # the worker is still serving
    time.sleep(0.5)
    assert not Job(job_id).exists() and store.list(f"jobs/{job_id}") == []


def test_duplicate_job_id_while_the_first_is_known(celery_app, env):
    store, _ = env
    job_id = unique_id("twice")
    submit_job(celery_app, "storyboard", storyboard_request(job_id, 1))
    with pytest.raises(JobExists, match="job_id: a job .* already exists"):
        submit_job(celery_app, "storyboard", storyboard_request(job_id, 1, reference_image="uploads/x.png"))


def test_a_reference_upload_is_only_written_for_valid_requests(celery_app, env):
    store, _ = env
    job_id = unique_id("valid-ref")
    store.put(f"uploads/{job_id}/r.png", png_bytes())
    request = storyboard_request(job_id, 1, reference_image=f"uploads/{job_id}/r.png", aspect_ratio="7:5")
    refused(celery_app, store, request, "aspect_ratio")


# Issue 21: request limits -------------------------------------------------------------------
SCENES = ["The keeper walks the cliff path at dusk", "The keeper reaches the lighthouse door"]


def test_a_290_kb_references_request_is_refused_naming_the_field(celery_app, env):
    """4.2: such a marker was woven into every scene's prompt (290,054 characters each)."""
    store, _ = env
    request = {"job_id": unique_id("woven-290kb"), "scene_prompts": SCENES,
               "consistency_markers": {"character": "grey-bearded keeper in a yellow coat " * 7_840}}
    assert len(json.dumps(request)) > 290_000
    refused(celery_app, store, request, "consistency_markers.character", "at most 1000 characters", "references")


def test_context_that_fits_each_field_but_not_the_prompt_is_refused_once_woven(celery_app, env):
    store, _ = env
    request = {"job_id": unique_id("woven-over"), "scene_prompts": SCENES,
               "consistency_markers": {f"detail_{n}": "yellow oilskin coat, " * 45 for n in range(5)},
               "transition_notes": ["cut on the lantern swing"]}
    with pytest.raises(RequestError) as error:
        submit_job(celery_app, "references", request)
    first, second = str(error.value).split("; ")
    assert first.startswith("scene_prompts.0: the prompt woven with consistency_markers has ")
    assert second.startswith("scene_prompts.1: the prompt woven with consistency_markers, transition_notes.0 has ")
    assert first.endswith("characters, the limit is 4000")
    nothing_written(store, request["job_id"])


@pytest.mark.parametrize("as_text", [False, True])
def test_the_fleet_refuses_an_oversized_request_sent_by_task_name(celery_app, env, as_text):
    """4.7: a main app without framefleet sends it anyway; the fleet counts before validating."""
    store, _ = env
    job_id = unique_id("oversized")
    request = {"job_id": job_id, "clips": [{"start_prompt": "a harbour at dawn " * 10,
                                            "end_prompt": "the lighthouse at night " * 10}] * 2_000}
    with pytest.raises(RequestError, match="^clips: the job would have 4000 frames, the limit is 64$"):
        _send_and_wait(celery_app, "framefleet.storyboard.create", json.dumps(request) if as_text else request)
    nothing_written(store, job_id)


def test_the_fleet_refuses_json_text_over_max_request_bytes(celery_app, env):
    store, _ = env
    job_id = unique_id("over-bytes")
    text = json.dumps({"job_id": job_id, "clips": [{"start_prompt": "x" * 4000, "end_prompt": "y" * 4000}] * 140})
    expected = rf"^request: the JSON text has {len(text)} characters, the limit is 1048576 \(max_request_bytes\)$"
    with pytest.raises(RequestError, match=expected):
        _send_and_wait(celery_app, "framefleet.references.create", text)
    nothing_written(store, job_id)
