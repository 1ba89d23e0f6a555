"""deploy/: the compose stack and Kubernetes manifests carry what the fleet needs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from framefleet.config.celery import QUEUES, broker_lists, celery_config
from framefleet.config.settings import Settings
from kombu.transport import redis as kombu_redis

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def k8s(kind: str) -> list[dict]:
    docs = []
    for path in (DEPLOY / "k8s").glob("*.yaml"):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == kind]
    return docs


def test_compose_has_a_scalable_service_per_queue():
    services = compose()["services"]
    for queue in QUEUES:
        service = services[queue]
        command = service["command"]
        assert command[command.index("-Q") + 1] == queue
        assert "container_name" not in service and "ports" not in service  # --scale works
        assert service["restart"] == "always"
    assert services["beat"]["command"][:4] == ["celery", "-A", "framefleet.workers.app", "beat"]
    assert services["flower"]["command"] == ["framefleet", "flower"]


def test_compose_gpu_reservation_redis_persistence_and_bucket():
    services = compose()["services"]
    devices = services["gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    assert services["gpu"]["build"]["dockerfile"] == "deploy/Dockerfile.gpu"
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "mc mb" in services["minio-init"]["command"][0]


def test_k8s_deployments_probes_and_gpu():
    deployments = {d["metadata"]["name"]: d for d in k8s("Deployment")}
    for queue in QUEUES:
        container = deployments[f"framefleet-{queue}"]["spec"]["template"]["spec"]["containers"][0]
        assert container["command"][container["command"].index("-Q") + 1] == queue
        assert "inspect ping" in " ".join(container["livenessProbe"]["exec"]["command"])
        assert {"configMapRef": {"name": "framefleet-settings"}} in container["envFrom"]
    gpu = deployments["framefleet-gpu"]["spec"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert deployments["framefleet-beat"]["spec"]["replicas"] == 1


def test_keda_scales_each_queue_on_its_redis_list():
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in k8s("ScaledObject")}
    assert set(scaled) == {f"framefleet-{q}" for q in QUEUES}
    for queue in QUEUES:
        spec = scaled[f"framefleet-{queue}"]["spec"]
        # Every priority sub-list of the queue counts, summed by the scaling formula.
        lists = {t["name"]: t["metadata"]["listName"] for t in spec["triggers"] if t["type"] == "redis"}
        assert list(lists.values()) == broker_lists(queue) == priority_lists(queue)
        assert spec["advanced"]["scalingModifiers"]["formula"] == " + ".join(lists)
        assert all(re.fullmatch(r"[a-z]\w*", name) for name in lists)  # a formula variable, not an expression
        assert spec["minReplicaCount"] >= 1


def test_the_fleet_keeps_kombus_default_transport_options():
    """A main app with Celery's defaults reads the bindings and priority lists the fleet writes
    (docs/main-app-clients.md): only the visibility timeout is the fleet's own."""
    config = celery_config(Settings())
    for options in (config["broker_transport_options"], config["result_backend_transport_options"]):
        assert set(options) == {"visibility_timeout"}


def priority_lists(queue: str) -> list[str]:
    """The Redis lists kombu's Redis transport, with its defaults, keeps for one queue (its own
    naming, not a copy of it), served first first."""
    channel = kombu_redis.Channel.__new__(kombu_redis.Channel)  # its naming needs no connection
    return [channel._q_for_pri(queue, step) for step in channel.priority_steps]


def test_every_framefleet_variable_in_deploy_is_a_setting():
    fields = {f"FRAMEFLEET_{name.upper()}" for name in Settings.model_fields}
    used = set()
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            used |= set(re.findall(r"FRAMEFLEET_[A-Z0-9_]+", path.read_text()))
    assert used and not used - fields, sorted(used - fields)


def test_dockerfiles_install_with_the_makefile_targets():
    makefile = (DEPLOY.parent / "Makefile").read_text()
    for name, target in (("Dockerfile", "install"), ("Dockerfile.gpu", "install-scoring")):
        assert f"RUN make {target} " in (DEPLOY / name).read_text()
        assert re.search(rf"^{target}:", makefile, re.M)


@pytest.mark.skipif(shutil.which("docker") is None or subprocess.run(
    ["docker", "compose", "version"], capture_output=True).returncode != 0, reason="no docker compose CLI here")
def test_docker_compose_config_accepts_the_file(tmp_path):
    env = tmp_path / ".env"
    env.write_text((DEPLOY / ".env.example").read_text())
    subprocess.run(["docker", "compose", "--env-file", str(env), "-f", str(DEPLOY / "docker-compose.yml"), "config",
                    "-q"], check=True, cwd=DEPLOY)


def mebibytes(quantity: str) -> int:
    """A Kubernetes (512Mi, 2Gi) or Compose (512m, 2g; binary units in Docker) memory size."""
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi|m|g)", str(quantity)).groups()
    return int(number) * (1024 if unit in ("Gi", "g") else 1)


@pytest.mark.parametrize("queue", ["intake", "control", "images"])
def test_memory_limits_are_set_alike_in_compose_and_k8s(queue):
    deployment = {d["metadata"]["name"]: d for d in k8s("Deployment")}[f"framefleet-{queue}"]
    in_k8s = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    in_compose = compose()["services"][queue]["deploy"]["resources"]
    request, limit = mebibytes(in_k8s["requests"]["memory"]), mebibytes(in_k8s["limits"]["memory"])
    assert (request, limit) == (mebibytes(in_compose["reservations"]["memory"]),
                                mebibytes(in_compose["limits"]["memory"]))
    assert request < limit
