"""Predictions on a Replicate deployment (the account's warm instances of a model), through the
official client against the stand-in: the deployments endpoint for creation, the same budgets,
ledger, watcher and cancel as a public model's predictions."""

from __future__ import annotations

import time

import pytest
from framefleet.tasks.job.model import Job
from framefleet.tasks.providers import adapters
from framefleet.tasks.providers.adapters import image_model_registry
from framefleet.tasks.providers.base import GenerationStopped
from replicate.exceptions import ReplicateError

from tests.helpers import png_bytes, stored_job, unique_id
from tests.integration.test_provider_clients import generator, replicate_server, request  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

DEPLOYMENT = "acme/warm-banana"


@pytest.fixture
def deployed(replicate_server):  # noqa: F811 (the fixture imported above)
    replicate_server.deployments[DEPLOYMENT] = "google/nano-banana"
    return replicate_server


def test_the_fleets_model_is_created_on_its_deployment(deployed, generator):  # noqa: F811
    job_id = stored_job(unique_id("deploy"))
    images = [png_bytes((255, 0, 0))]
    made = generator(replicate_deployment=DEPLOYMENT)
    data = made.generate(request(job_id, input_images=images))
    (creation,) = deployed.creations
    assert creation["deployment"] == DEPLOYMENT and creation["model"] == "google/nano-banana"
    assert [deployed.file_bytes(u) for u in creation["input"]["image_input"]] == images  # the adapter's input
    assert creation["cancel_after"] == 300.0  # the server-side deadline goes with it too
    assert data == deployed.output_png(creation["id"])
    assert deployed.call_counts()["get"] == 0  # its status came from the account's listings
    assert Job(job_id).ledger.prediction_id(f"jobs/{job_id}/variations/clip_001_start/v1.png#0") == creation["id"]
    assert Job(job_id).ledger.costs()["total"] == {"predictions_created": 1}
    # Another model of the same fleet has no deployment: the public model's endpoint.
    made.generate(request(job_id, variation=2, ledger_key="v2#0", model="bytedance/seedream-4"))
    assert deployed.creations[1]["deployment"] is None and deployed.creations[1]["model"] == "bytedance/seedream-4"


def test_a_deployment_creation_waits_out_a_429_in_the_creation_budget(deployed, generator):  # noqa: F811
    deployed.create_script = [("429", 1)]
    job_id = stored_job(unique_id("deploy429"))
    started = time.monotonic()
    generator(replicate_deployment=DEPLOYMENT).generate(request(job_id))
    assert time.monotonic() - started >= 1.0
    assert deployed.create_attempts == 2 and [c["deployment"] for c in deployed.creations] == [DEPLOYMENT]
    assert Job(job_id).ledger.costs()["total"]["creation_waits"] == 1  # the fleet-wide pause after the 429


def test_stopping_cancels_the_deployment_prediction(deployed, generator):  # noqa: F811
    deployed.never_finish = True
    checks = []

    def straggler_cut():
        checks.append(1)
        return "straggler cut" if len(checks) >= 3 else None

    with pytest.raises(GenerationStopped, match="straggler cut"):
        generator(replicate_deployment=DEPLOYMENT).generate(request(unique_id("deploystop")), should_stop=straggler_cut)
    assert deployed.canceled == [deployed.creations[0]["id"]] and deployed.creations[0]["deployment"] == DEPLOYMENT


def test_a_registry_entry_names_the_deployment_of_its_model(deployed, generator, monkeypatch):  # noqa: F811
    registry = dict(image_model_registry())
    registry["bytedance/seedream-4"] = registry["bytedance/seedream-4"].model_copy(
        update={"deployment": "acme/warm-seedream"})
    monkeypatch.setattr(adapters, "image_model_registry", lambda: registry)
    deployed.deployments["acme/warm-seedream"] = "bytedance/seedream-4"
    generator().generate(request(unique_id("regdeploy"), model="bytedance/seedream-4"))
    assert [(c["deployment"], c["input"]["seed"]) for c in deployed.creations] == [("acme/warm-seedream", 7)]


def test_a_deployment_the_account_lacks_is_an_error_not_a_prediction(deployed, generator):  # noqa: F811
    with pytest.raises(ReplicateError, match="Not found"):
        generator(replicate_deployment="acme/missing").generate(request(unique_id("nodeploy")))
    assert deployed.creations == []
