import threading

import boto3
import pytest
from framefleet.tasks.artifacts.store import LocalStore, S3Store, open_store, read_in_parallel
from moto import mock_aws


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


def exercise_copy(store):
    store.put("jobs/j2/variations/f/v1.png", b"candidate")
    store.copy("jobs/j2/variations/f/v1.png", "jobs/j2/frames/f.png", "image/png")
    store.put("jobs/j2/variations/f/v1.png", b"rewritten")
    assert store.get("jobs/j2/frames/f.png") == b"candidate"  # a copy, not a link
    with pytest.raises(KeyError):
        store.copy("jobs/j2/variations/f/missing.png", "jobs/j2/frames/g.png")
    assert store.list("jobs/j2") == ["jobs/j2/frames/f.png", "jobs/j2/variations/f/v1.png"]  # nothing half-made
    with pytest.raises(ValueError):
        store.copy("jobs/j2/variations/f/v1.png", "../escape.png")


def test_local_store(tmp_path):
    store = LocalStore(tmp_path / "root")
    exercise(store)
    exercise_copy(store)
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
    exercise_copy(store)
    assert client.head_object(Bucket="bkt", Key="pre/fix/jobs/j2/frames/f.png")["ContentType"] == "image/png"


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
    store.copy("jobs/j/m.json", "jobs/j/copy.json")
    for key in ("p/jobs/j/m.json", "p/jobs/j/copy.json"):
        assert client.head_object(Bucket="sse-bucket", Key=key)["ServerSideEncryption"] == "AES256"


def test_parallel_reads_overlap_keep_their_order_and_raise_an_error():
    all_reading = threading.Barrier(3, timeout=10)

    def read(key: str) -> str:
        all_reading.wait()  # breaks (BrokenBarrierError) unless the three reads run at once
        return key.upper()

    assert read_in_parallel(read, ["a", "b", "c"]) == ["A", "B", "C"]

    def read_missing(key: str) -> str:
        if key == "gone":
            raise KeyError(key)
        return key

    with pytest.raises(KeyError):
        read_in_parallel(read_missing, ["a", "gone", "c"])
