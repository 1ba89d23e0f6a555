"""Artifact store: one small interface, a local-folder backend and an S3 backend.

Keys are relative and '/'-separated (``jobs/{job}/frames/clip_001_start.png``); a write to an
existing key overwrites it, so a redelivered task never duplicates an artifact.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Protocol, TypeVar
from urllib.parse import urlparse

import boto3
from botocore.exceptions import ClientError
from framefleet.config.settings import Settings, get_settings
from framefleet.tasks.job.requests import check_artifact_key


class ArtifactStore(Protocol):
    url: str

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...
    def get(self, key: str) -> bytes: ...
    def copy(self, source: str, key: str, content_type: str = "application/octet-stream") -> None: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> list[str]: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def location(self, key: str) -> str: ...


class LocalStore:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / check_artifact_key(key)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half a file and a rewrite is atomic.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def copy(self, source: str, key: str, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")  # then rename, as put does
        os.close(fd)
        try:
            shutil.copyfile(self._path(source), tmp)
        except BaseException as error:
            os.unlink(tmp)
            if isinstance(error, FileNotFoundError):
                raise KeyError(source) from None
            raise
        os.replace(tmp, path)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/"))
        if not base.exists():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for key in keys:
            self._path(key).unlink(missing_ok=True)
        base = self._path(prefix.rstrip("/"))
        for folder in sorted((p for p in base.rglob("*") if p.is_dir()), reverse=True) if base.exists() else []:
            folder.rmdir()
        if base.is_dir():
            base.rmdir()
        return len(keys)

    def location(self, key: str) -> str:
        return str(self._path(key))


class S3Store:
    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, client=None,
                 server_side_encryption: str | None = None, kms_key_id: str | None = None):
        self.bucket = bucket
        self.encryption = {}
        if server_side_encryption:
            self.encryption["ServerSideEncryption"] = server_side_encryption
            if kms_key_id:
                self.encryption["SSEKMSKeyId"] = kms_key_id
        self.prefix = prefix.strip("/")
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url)
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")

    def _object(self, key: str) -> str:
        check_artifact_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._object(key), Body=data, ContentType=content_type,
                               **self.encryption)

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._object(key))["Body"].read()
        except ClientError as error:
            if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
                raise KeyError(key) from None
            raise

    def copy(self, source: str, key: str, content_type: str = "application/octet-stream") -> None:
        """A server-side copy: the bytes never pass through the worker."""
        try:
            self.client.copy_object(Bucket=self.bucket, Key=self._object(key), ContentType=content_type,
                                    CopySource={"Bucket": self.bucket, "Key": self._object(source)},
                                    MetadataDirective="REPLACE", **self.encryption)
        except ClientError as error:
            if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
                raise KeyError(source) from None
            raise

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._object(key))
            return True
        except ClientError as error:
            if error.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def list(self, prefix: str) -> list[str]:
        full = self._object(prefix.rstrip("/")) + "/"
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        strip = len(self.prefix) + 1 if self.prefix else 0
        return sorted(k[strip:] for k in keys)

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for start in range(0, len(keys), 1000):  # delete_objects takes at most 1000 keys
            batch = [{"Key": self._object(k)} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object(key)}"


T = TypeVar("T")
# Store calls that overlap: in production the store is S3, a round trip per object. One pool per
# process, shared by the steps that read several images at once (scoring, the contact sheet) and
# scoring's thumbnail writes, so it also bounds how many full-size images one process holds
# decoded at a time; boto3's default 10 connections cover it. Never wait on the pool from inside
# one of its own calls (it could deadlock).
STORE_THREADS = 8
_store_calls = ThreadPoolExecutor(max_workers=STORE_THREADS, thread_name_prefix="store")


def read_in_parallel(read: Callable[[str], T], keys: Iterable[str]) -> list[T]:
    """``[read(key) for key in keys]``, the reads overlapping; the first error is raised."""
    return list(_store_calls.map(read, keys))


def in_background(work: Callable[[T], object], items: Iterable[T]) -> list[Future]:
    """Start ``work(item)`` for each item on the same pool, while the caller goes on; it waits on
    (and reads the errors of) the futures itself."""
    return [_store_calls.submit(work, item) for item in items]


def open_store(url: str, s3_endpoint_url: str | None = None, server_side_encryption: str | None = None,
               kms_key_id: str | None = None) -> ArtifactStore:
    """``s3://bucket/prefix`` → S3 (any S3-compatible endpoint); ``file://path`` or a plain path → folder."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"store_url: no bucket in {url!r}")
        return S3Store(parsed.netloc, parsed.path, endpoint_url=s3_endpoint_url,
                       server_side_encryption=server_side_encryption, kms_key_id=kms_key_id)
    if parsed.scheme == "file":
        return LocalStore(url[len("file://"):])
    if parsed.scheme == "":
        return LocalStore(url)
    raise ValueError(f"store_url: unsupported scheme {parsed.scheme!r} (use s3:// or file://)")


@lru_cache(maxsize=1)
def fleet_store() -> ArtifactStore:
    settings: Settings = get_settings()
    return open_store(settings.store_url, settings.s3_endpoint_url, settings.s3_server_side_encryption,
                      settings.s3_sse_kms_key_id)
