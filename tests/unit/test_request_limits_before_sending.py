"""Issue 21 (4.7): the CLI and the Python client refuse an oversized request before they read all
of it, read the reference image or send anything; the fleet checks again (integration tests)."""

from __future__ import annotations

import json

import pytest
from framefleet.config.settings import get_settings
from framefleet.tasks.job.requests import RequestError
from framefleet.workers import client
from framefleet.workers.cli import main, prepare_request, read_request

CLIP = {"start_prompt": "a harbour at dawn", "end_prompt": "the lighthouse at night"}


@pytest.fixture
def limit(monkeypatch):
    """This process's max_request_bytes, as a client or the CLI reads it from the environment."""
    def set_limit(value: int) -> int:
        monkeypatch.setenv("FRAMEFLEET_MAX_REQUEST_BYTES", str(value))
        get_settings.cache_clear()
        return value

    yield set_limit
    get_settings.cache_clear()


class NoSending:
    """A Celery app stand-in: a test fails if anything is sent."""

    def send_task(self, *args, **kwargs):
        raise AssertionError("the request was sent")


def test_a_request_file_over_the_limit_is_refused_without_reading_it(tmp_path, limit):
    limit(4096)
    path = tmp_path / "huge.json"
    with open(path, "wb") as file:
        file.truncate(80_000_000)  # sparse: 80 MB as the file system reports it, no disk used
    with pytest.raises(RequestError, match=rf"^request: {path} has more than 4096 bytes, the limit is 4096 "
                                           r"\(FRAMEFLEET_MAX_REQUEST_BYTES\)"):
        read_request(str(path))
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"clips": [CLIP]}))
    assert read_request(str(small)) == {"clips": [CLIP]}


def test_a_request_file_that_is_not_utf8_json_is_one_line(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"clips": "\xff"}')
    with pytest.raises(RequestError, match=rf"^request: {path} is not valid JSON"):
        read_request(str(path))


def test_the_cli_prepare_refuses_an_oversized_request_before_the_reference_is_read(tmp_path):
    missing_image = str(tmp_path / "not-there.png")  # read after the pre-check: its error would show otherwise
    request = {"clips": [CLIP] * 10_000}
    with pytest.raises(RequestError, match=r"^clips: the job would have 20000 frames, the limit is 64"):
        prepare_request("storyboard", request, missing_image)
    assert "job_id" not in request  # nothing was added to it either


def test_framefleet_submit_of_an_oversized_file_is_one_line_before_any_connection(tmp_path, capsys, limit,
                                                                                  monkeypatch):
    limit(2048)
    monkeypatch.delenv("FRAMEFLEET_BROKER_URL", raising=False)  # a connection attempt would fail differently
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"clips": [{"start_prompt": "x" * 3000, "end_prompt": "y"}]}))
    assert main(["submit", "storyboard", str(path)]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: request: {path} has more than 2048 bytes")


@pytest.mark.parametrize("request_, field", [
    ({"clips": [CLIP] * 10_000}, "clips: the job would have 20000 frames"),
    (json.dumps({"clips": [CLIP] * 10_000}), "clips: the job would have 20000 frames"),  # 0.6 MB: counted
    (json.dumps({"clips": [{"start_prompt": "x" * 4000, "end_prompt": "y" * 4000}] * 200}),
     "request: the JSON text has 1608011 characters, the limit is 1048576"),
    ({"clips": [{"start_prompt": "x" * 2_000_000, "end_prompt": "y"}]}, "clips.0.start_prompt: the request passes"),
])
def test_the_client_refuses_an_oversized_request_before_sending(request_, field):
    with pytest.raises(RequestError) as error:
        client.submit_job(NoSending(), "storyboard", request_)
    assert str(error.value).startswith(field)


def test_the_client_uses_its_own_settings(limit):
    limit(1024)
    with pytest.raises(RequestError, match="^request: the JSON text has 2000 characters, the limit is 1024"):
        client.submit_job(NoSending(), "storyboard", "x" * 2000)
