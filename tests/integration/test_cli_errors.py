"""`framefleet` as a user runs it: every ordinary mistake is one line on stderr and exit status 2,
and a submit with --reference writes nothing for a refused request (issue 9, defect 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from framefleet.tasks.artifacts.store import open_store
from framefleet.workers.local_redis import free_port

from tests.helpers import png_bytes, put_reference, storyboard_request, unique_id

pytestmark = pytest.mark.integration


def run_cli(*args: str, env: dict[str, str] | None = None, timeout_s: float = 60) -> subprocess.CompletedProcess:
    """The CLI in a subprocess whose FRAMEFLEET_ settings are exactly ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FRAMEFLEET_")}
    return subprocess.run([sys.executable, "-m", "framefleet.workers.cli", *args], env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=timeout_s)


def assert_one_line_error(result: subprocess.CompletedProcess, *names: str) -> str:
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and all(name in lines[0] for name in names), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def store(start_fleet, tmp_path_factory):
    """A fleet that refuses jobs of more than 4 frames, while the CLI's own limit is the default 64,
    so a request can pass the CLI's checks and still be refused by the fleet."""
    root = tmp_path_factory.mktemp("artifacts-cli")
    start_fleet({"FRAMEFLEET_STORE_URL": f"file://{root}", "FRAMEFLEET_OFFLINE_IMAGE_LATENCY_S": "1",
                 "FRAMEFLEET_MAX_FRAMES": "4"})
    return open_store(f"file://{root}")


@pytest.fixture
def request_file(tmp_path):
    def write(request: dict) -> str:
        path = tmp_path / f"{request['job_id']}.json"
        path.write_text(json.dumps(request))
        return str(path)

    return write


def test_each_ordinary_mistake_is_one_line(broker_url, tmp_path, request_file, no_process_outlives_the_test):
    request = request_file(storyboard_request(unique_id("cli-error"), 1))
    reference = tmp_path / "ref.png"
    reference.write_bytes(png_bytes())
    broker = {"FRAMEFLEET_BROKER_URL": broker_url}

    assert_one_line_error(run_cli("status", "job-1"), "FRAMEFLEET_BROKER_URL is not set")
    assert_one_line_error(run_cli("submit", "storyboard", request), "FRAMEFLEET_BROKER_URL is not set")

    # Nothing listens there: refused at once, where Celery would retry for a long time.
    nowhere = {"FRAMEFLEET_BROKER_URL": f"redis://:s3cret@127.0.0.1:{free_port()}/0"}
    for command in (["submit", "storyboard", request], ["status", "job-1"], ["cancel", "job-1"]):
        line = assert_one_line_error(run_cli(*command, env=nowhere, timeout_s=15),
                                     "cannot reach the broker at redis://:**@127.0.0.1:")
        assert "s3cret" not in line

    missing = str(tmp_path / "absent.json")
    assert_one_line_error(run_cli("submit", "storyboard", missing, env=broker), "request", missing)
    (tmp_path / "broken.json").write_text('{"clips": [')
    assert_one_line_error(run_cli("submit", "storyboard", str(tmp_path / "broken.json"), env=broker),
                          "not valid JSON")
    assert_one_line_error(run_cli("submit", "storyboard", request, "--reference", str(reference),
                                  env={**broker, "FRAMEFLEET_STORE_URL": "ftp://files.example/frames"}),
                          "store_url", "ftp")
    assert_one_line_error(run_cli("status", "job-1", env={**broker, "FRAMEFLEET_NUM_VARIATIONS": "lots"}),
                          "FRAMEFLEET_NUM_VARIATIONS")
    for command in ("status", "cancel", "resume"):
        assert_one_line_error(run_cli(command, "never-submitted", env=broker), "job_id", "'never-submitted'")

    debug = run_cli("--debug", "status", "job-1")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "FleetUnavailable" in debug.stderr


def test_a_refused_submit_keeps_the_running_jobs_reference(celery_app, store, broker_url, tmp_path,
                                                           request_file, no_process_outlives_the_test):
    from framefleet.workers.client import submit_job, wait_for_job

    job_id = unique_id("keep-ref")
    uploaded = put_reference(store, job_id, colour=(200, 40, 40))
    submit_job(celery_app, "storyboard", storyboard_request(job_id, 1, reference_image=uploaded))
    own = f"jobs/{job_id}/inputs/reference.png"
    original = store.get(own)
    other = tmp_path / "other.png"
    other.write_bytes(png_bytes((20, 200, 20)))

    result = run_cli("submit", "storyboard", request_file(storyboard_request(job_id, 1)), "--reference", str(other),
                     env={"FRAMEFLEET_BROKER_URL": broker_url, "FRAMEFLEET_STORE_URL": store.url})
    assert_one_line_error(result, "job_id", "already exists")
    assert store.get(own) == original
    assert wait_for_job(job_id, timeout_s=120).outcome == "succeeded"
    assert store.get(own) == original  # the frames chained from the job's own reference throughout
    assert store.list("uploads") == [uploaded]  # the CLI's upload is gone


def test_a_refused_request_leaves_nothing_in_the_store(store, broker_url, tmp_path, request_file,
                                                       no_process_outlives_the_test):
    env = {"FRAMEFLEET_BROKER_URL": broker_url, "FRAMEFLEET_STORE_URL": store.url}
    reference = tmp_path / "ref.png"
    reference.write_bytes(png_bytes())
    uploads_before = store.list("uploads")

    bad_field = storyboard_request(unique_id("bad-field"), 1, aspect_ratio="5:4")
    assert_one_line_error(run_cli("submit", "storyboard", request_file(bad_field), "--reference", str(reference),
                                  env=env), "aspect_ratio")
    # Within the CLI's limits (64 frames) but not the fleet's (4): refused by the fleet after the upload.
    too_long = storyboard_request(unique_id("too-long"), 3)
    assert_one_line_error(run_cli("submit", "storyboard", request_file(too_long), "--reference", str(reference),
                                  env=env), "clips", "limit is 4")
    assert store.list("uploads") == uploads_before
    assert store.list(f"jobs/{bad_field['job_id']}") == [] and store.list(f"jobs/{too_long['job_id']}") == []


def test_an_accepted_submit_gives_the_job_its_own_copy_of_the_reference(store, broker_url, tmp_path, request_file,
                                                                        no_process_outlives_the_test):
    from framefleet.workers.client import wait_for_job

    reference = tmp_path / "ref.png"
    reference.write_bytes(png_bytes((90, 90, 200)))
    uploads_before = store.list("uploads")
    job_id = unique_id("cli-ref")
    result = run_cli("submit", "storyboard", request_file(storyboard_request(job_id, 1)), "--reference",
                     str(reference), env={"FRAMEFLEET_BROKER_URL": broker_url, "FRAMEFLEET_STORE_URL": store.url})
    assert result.returncode == 0 and result.stdout.strip() == job_id, result.stderr
    assert wait_for_job(job_id, timeout_s=120).outcome == "succeeded"
    manifest = json.loads(store.get(f"jobs/{job_id}/manifest.json"))
    assert manifest["frames"][0]["inputs"] == [f"jobs/{job_id}/inputs/reference.png"]
    assert store.list("uploads") == uploads_before
