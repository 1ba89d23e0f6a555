"""Reference URL fetches against a real local HTTP server: one total deadline for the whole fetch,
however slowly (or not at all) the bytes arrive."""

from __future__ import annotations

import threading

import pytest
from framefleet.config.settings import Settings
from framefleet.tasks.artifacts.inputs import fetch_url
from framefleet.tasks.job.requests import RequestError

from tests.fakes.http import LocalServer
from tests.helpers import png_bytes

pytestmark = pytest.mark.integration

DRIP_BYTES = 50  # one every 0.2 s: 10 s for the whole body


class SlowHost:
    """/drip.png sends its headers, then one byte every 0.2 s; /stall answers nothing at all for
    20 s; /ref.png is a small PNG at full speed. Records how far each slow answer got."""

    def __init__(self):
        self.stop = threading.Event()
        self.dripped = 0
        self.stall_over = threading.Event()
        self.png = png_bytes()
        self.server = LocalServer(self)

    def handle(self, handler, method):
        if handler.path == "/ref.png":
            return handler.send(200, raw=self.png, content_type="image/png")
        if handler.path == "/stall":
            self.stop.wait(20)
            self.stall_over.set()
            return None
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.send_header("Content-Length", str(DRIP_BYTES))
        handler.end_headers()
        try:
            while self.dripped < DRIP_BYTES and not self.stop.wait(0.2):
                handler.wfile.write(b"x")
                handler.wfile.flush()
                self.dripped += 1
        except OSError:  # the client hung up
            pass


@pytest.fixture
def host():
    slow = SlowHost()
    with slow.server:
        yield slow
        slow.stop.set()


def settings(**extra) -> Settings:
    # Per-read timeout 10 s, as in production: each drip arrives well inside it.
    return Settings(reference_url_allowed_hosts=["127.0.0.1"], reference_url_deadline_s=1.0,
                    reference_url_timeout_s=10.0, **extra)


def test_a_dripping_body_fails_at_the_deadline_naming_the_field(host):
    with pytest.raises(RequestError, match=r"^reference_image: .*/drip.png was not fetched within the 1 s deadline"):
        fetch_url(f"{host.server.url}/drip.png", "reference_image", settings())
    assert host.dripped < DRIP_BYTES  # it gave up long before the drip would have finished


def test_a_server_that_never_answers_fails_at_the_deadline_not_the_read_timeout(host):
    with pytest.raises(RequestError, match=r"^reference_image: .*/stall was not fetched within the 1 s deadline"):
        fetch_url(f"{host.server.url}/stall", "reference_image", settings())
    assert not host.stall_over.is_set()  # one blocking read did not outlast the deadline


def test_a_prompt_server_is_fetched_within_the_deadline(host):
    assert fetch_url(f"{host.server.url}/ref.png", "reference_image", settings()) == host.png


def test_an_unreachable_port_is_a_fetch_error_naming_the_field(host):
    port = host.server.server_address[1]
    with LocalServer(None) as closed:  # bind a port, then close it: nothing listens there
        free = closed.server_address[1]
    assert free != port
    with pytest.raises(RequestError, match=r"^reference_image: could not fetch .*ConnectError"):
        fetch_url(f"http://127.0.0.1:{free}/ref.png", "reference_image", settings())
