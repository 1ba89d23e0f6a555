"""The same pipeline with the artifacts in S3 (boto3 against a local moto server)."""

from __future__ import annotations

import boto3
import pytest
from framefleet.tasks.artifacts.store import S3Store
from framefleet.workers.local_redis import free_port
from moto.server import ThreadedMotoServer

from tests.helpers import put_reference, references_request, run_job, storyboard_request, unique_id

pytestmark = pytest.mark.integration

BUCKET = "framefleet-test"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_store(start_fleet):
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in AWS_ENV.items():
            patch.setenv(name, value)
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        start_fleet({**AWS_ENV, "FRAMEFLEET_STORE_URL": f"s3://{BUCKET}/fleet", "FRAMEFLEET_S3_ENDPOINT_URL": endpoint})
        yield S3Store(BUCKET, "fleet", client=client)
    server.stop()


def test_storyboard_on_s3(celery_app, s3_store):
    job_id = unique_id("s3-sb")
    reference = put_reference(s3_store, job_id)
    status, manifest = run_job(celery_app, "storyboard", storyboard_request(job_id, 3, reference_image=reference),
                               s3_store)
    assert status.outcome == "succeeded" and status.percent == 100.0
    assert len(manifest["frames"]) == 6
    for frame in manifest["frames"]:
        assert len(frame["variations"]) == 4
        assert frame["selected"]["index"] == next(v["index"] for v in frame["variations"] if v["rank"] == 1)
        assert frame["inputs"][0] == f"jobs/{job_id}/inputs/reference.png"
    assert manifest["frames"][2]["inputs"] == [f"jobs/{job_id}/inputs/reference.png",
                                               f"jobs/{job_id}/frames/clip_001_end.png"]
    keys = s3_store.list(f"jobs/{job_id}")
    assert len([k for k in keys if "/variations/" in k]) == 24
    assert len([k for k in keys if "/thumbnails/" in k]) == 24  # scoring's, for the contact sheet
    assert len([k for k in keys if "/frames/" in k]) == 6
    for frame in manifest["frames"]:  # copied inside S3 (CopyObject): the chosen candidate's bytes
        assert s3_store.get(frame["selected"]["frame_key"]) == s3_store.get(frame["selected"]["key"])
    assert s3_store.exists(f"jobs/{job_id}/inputs/reference.png")
    objects = s3_store.client.list_objects_v2(Bucket=BUCKET, Prefix=f"fleet/jobs/{job_id}/")["Contents"]
    assert len(objects) == len(keys)  # everything under the configured prefix
    assert s3_store.list(f"traces/{job_id}") == []


def test_reference_job_on_s3_keeps_traces_when_asked(celery_app, s3_store):
    job_id = unique_id("s3-refs")
    status, manifest = run_job(celery_app, "references",
                               references_request(job_id, 3, overrides={"keep_traces": True}), s3_store)
    assert status.outcome == "succeeded"
    assert manifest["frames"][0]["inputs"] == []
    assert manifest["frames"][1]["inputs"] == [f"jobs/{job_id}/frames/scene_001.png"]
    assert any(k.endswith("scene_003/prompt_trace_summary.json") for k in s3_store.list(f"traces/{job_id}"))
