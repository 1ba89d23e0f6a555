import boto3
import pytest
from moto import mock_aws

from framefleet.tasks.store import LocalStore, S3Store, open_store


def exercise(store):
    store.put("jobs/j1/frames/a.png", b"one")
    store.put("jobs/j1/frames/a.png", b"two")  # overwrite, never duplicate
    store.put("traces/j1/f/00_original_prompt.txt", b"p")
    store.put("traces/j1/g/x.json", b"{}")
    assert store.get("jobs/j1/frames/a.png") == b"two"
    assert store.exists("jobs/j1/frames/a.png") and not store.exists("jobs/j1/frames/b.png")
    assert store.list("traces/j1") == ["traces/j1/f/00_original_prompt.txt", "traces/j1/g/x.json"]
    assert store.delete_prefix("traces/j1") == 2
    assert store.list("traces/j1") == [] and store.list("jobs/j1") == ["jobs/j1/frames/a.png"]
    with pytest.raises(KeyError):
        store.get("jobs/j1/missing.png")
    for bad in ("../escape.txt", "/etc/passwd", "jobs/../../x", "jobs//x", "jobs/./x"):
        with pytest.raises(ValueError):
            store.put(bad, b"x")


def test_local_store(tmp_path):
    store = LocalStore(tmp_path / "root")
    exercise(store)
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "root" / "traces" / "j1").exists()


@mock_aws
def test_s3_store(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3")
    client.create_bucket(Bucket="bkt")
    store = S3Store("bkt", "/pre/fix/", client=client)
    exercise(store)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="bkt")["Contents"]]
    assert keys == ["pre/fix/jobs/j1/frames/a.png"]
    assert store.location("jobs/j1/frames/a.png") == "s3://bkt/pre/fix/jobs/j1/frames/a.png"


def test_open_store_by_url(tmp_path):
    assert isinstance(open_store(f"file://{tmp_path}"), LocalStore)
    assert open_store("file://./output").root.name == "output"
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    with pytest.raises(ValueError, match="store_url"):
        open_store("ftp://host/x")
    with pytest.raises(ValueError, match="store_url: no bucket"):
        open_store("s3:///prefix")


@mock_aws
def test_s3_server_side_encryption(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3")
    client.create_bucket(Bucket="sse-bucket")
    store = open_store("s3://sse-bucket/p", server_side_encryption="AES256")
    store.client = client
    store.put("jobs/j/m.json", b"{}")
    assert client.head_object(Bucket="sse-bucket", Key="p/jobs/j/m.json")["ServerSideEncryption"] == "AES256"
