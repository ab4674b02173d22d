"""S3-specific behaviour: configuration, missing buckets, multipart, and faults."""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mend.storage import (
    ArtifactNotFoundError,
    BucketNotFoundError,
    ChecksumMismatchError,
    S3Config,
    S3Store,
    open_store,
)
from mend.storage.s3 import MiB
from tests.support.flaky_proxy import FlakyProxy
from tests.support.s3 import MotoS3

FAST = S3Config(retry_backoff=0.01)


def verify_bucket_directly(moto: MotoS3, bucket: str) -> dict[str, bytes]:
    """Read every object without the store and check its sha256 metadata."""
    client = moto.client()
    contents = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for entry in page.get("Contents", []):
            response = client.get_object(Bucket=bucket, Key=entry["Key"])
            body = response["Body"].read()
            assert response["Metadata"]["sha256"] == hashlib.sha256(body).hexdigest(), entry["Key"]
            contents[entry["Key"]] = body
    return contents


# ---------------------------------------------------------------- configuration


def test_uses_standard_aws_environment(moto_s3: MotoS3, s3_bucket: str) -> None:
    store = open_store(f"s3://{s3_bucket}/some/prefix/")
    assert isinstance(store, S3Store)
    assert store.uri == f"s3://{s3_bucket}/some/prefix"
    assert store.client.meta.endpoint_url == moto_s3.endpoint_url  # AWS_ENDPOINT_URL_S3
    assert store.client.meta.region_name == moto_s3.region
    assert store.client.meta.config.retries == {"mode": "standard", "total_max_attempts": 8}
    store.put_bytes("k", b"v")
    assert moto_s3.client().get_object(Bucket=s3_bucket, Key="some/prefix/k")["Body"].read() == b"v"


def test_configurable_attempts_and_explicit_endpoint(moto_s3: MotoS3, s3_bucket: str) -> None:
    with FlakyProxy(moto_s3.endpoint_url, failure_rate=0.0) as proxy:
        store = S3Store(s3_bucket, config=S3Config(max_attempts=3, endpoint_url=proxy.endpoint_url))
        assert store.client.meta.config.retries["total_max_attempts"] == 3
        store.put_bytes("k", b"v")
        assert proxy.stats.forwarded == 1


def test_profile_from_aws_profile(
    moto_s3: MotoS3, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file = tmp_path / "aws-config"
    config_file.write_text("[profile mend-test]\nregion = eu-west-2\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config_file))
    monkeypatch.setenv("AWS_PROFILE", "mend-test")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION")
    store = open_store(f"s3://{s3_bucket}")
    assert store.client.meta.region_name == "eu-west-2"  # type: ignore[attr-defined]


def test_missing_bucket(moto_s3: MotoS3, tmp_path: Path) -> None:
    store = open_store("s3://mend-no-such-bucket-4711/p", s3_config=FAST)
    operations = {
        "put_bytes": lambda: store.put_bytes("k", b"x"),
        "get_bytes": lambda: store.get_bytes("k"),
        "get_file": lambda: store.get_file("k", tmp_path / "k"),
        "exists": lambda: store.exists("k"),
        "info": lambda: store.info("k"),
        "list": lambda: store.list(),
        "delete": lambda: store.delete("k"),
        "move": lambda: store.move("k", "j"),
        "put_if_absent": lambda: store.put_if_absent("k", b"x"),
    }
    for name, operation in operations.items():
        with pytest.raises(BucketNotFoundError) as info:
            operation()
        assert info.value.bucket == "mend-no-such-bucket-4711", name
        assert "mend-no-such-bucket-4711" in str(info.value)


def test_missing_key_names_the_key(moto_s3: MotoS3, s3_bucket: str) -> None:
    store = S3Store(s3_bucket, "pre", config=FAST)
    with pytest.raises(ArtifactNotFoundError) as info:
        store.get_bytes("a/b")
    assert info.value.key == "a/b"
    assert f"s3://{s3_bucket}/pre/a/b" in str(info.value)


# ---------------------------------------------------------------- multipart


def test_multipart_upload_download_and_move(
    moto_s3: MotoS3, s3_bucket: str, tmp_path: Path
) -> None:
    config = S3Config(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, retry_backoff=0.01)
    store = S3Store(s3_bucket, "ckpt", config=config)
    source = tmp_path / "model.safetensors"
    source.write_bytes(os.urandom(11 * MiB))  # 3 parts: 5 + 5 + 1 MiB
    digest = hashlib.sha256(source.read_bytes()).hexdigest()

    store.put_file("v1/model.safetensors", source)
    head = moto_s3.client().head_object(Bucket=s3_bucket, Key="ckpt/v1/model.safetensors")
    assert head["ETag"].strip('"').endswith("-3"), head["ETag"]  # really multipart
    assert head["Metadata"]["sha256"] == digest
    assert store.info("v1/model.safetensors").sha256 == digest

    out = store.get_file("v1/model.safetensors", tmp_path / "down" / "model.safetensors")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest

    store.move("v1/model.safetensors", "v2/model.safetensors")  # multipart copy
    head = moto_s3.client().head_object(Bucket=s3_bucket, Key="ckpt/v2/model.safetensors")
    assert head["Metadata"]["sha256"] == digest
    assert store.list() == ["v2/model.safetensors"]
    assert hashlib.sha256(store.get_bytes("v2/model.safetensors")).hexdigest() == digest


def test_small_files_use_single_put(moto_s3: MotoS3, s3_bucket: str, tmp_path: Path) -> None:
    store = S3Store(s3_bucket, config=S3Config(multipart_threshold=5 * MiB))
    source = tmp_path / "small.bin"
    source.write_bytes(b"x" * 1000)
    store.put_file("small.bin", source)
    head = moto_s3.client().head_object(Bucket=s3_bucket, Key="small.bin")
    assert "-" not in head["ETag"]


# ---------------------------------------------------------------- put_if_absent


def test_put_if_absent_race_between_clients(moto_s3: MotoS3, s3_bucket: str) -> None:
    contenders = 6
    stores = [S3Store(s3_bucket, "leases") for _ in range(contenders)]
    barrier = threading.Barrier(contenders)

    def contend(index: int) -> bool:
        barrier.wait()
        return stores[index].put_if_absent("job-42", f"owner-{index}".encode())

    with ThreadPoolExecutor(contenders) as pool:
        results = list(pool.map(contend, range(contenders)))
    assert results.count(True) == 1
    assert stores[0].get_bytes("job-42") == f"owner-{results.index(True)}".encode()


def test_put_if_absent_survives_lost_response(moto_s3: MotoS3, s3_bucket: str) -> None:
    """The create succeeds but its response is lost; the retry sees 412 and must still win."""
    with FlakyProxy(moto_s3.endpoint_url, failure_rate=0.0) as proxy:
        store = S3Store(s3_bucket, config=S3Config(endpoint_url=proxy.endpoint_url))
        proxy.inject("lose")
        assert store.put_if_absent("lock", b"me") is True
        assert proxy.stats.lost_responses == 1
        proxy.inject("lose")
        assert store.put_if_absent("lock", b"someone else") is False
        assert store.get_bytes("lock") == b"me"


# ---------------------------------------------------------------- faults


def test_operations_complete_through_20_percent_failures(
    moto_s3: MotoS3, s3_bucket: str, flaky_s3_proxy: FlakyProxy, tmp_path: Path
) -> None:
    assert flaky_s3_proxy.failure_rate == pytest.approx(0.2)
    config = S3Config(
        endpoint_url=flaky_s3_proxy.endpoint_url,
        retry_backoff=0.01,
        multipart_threshold=5 * MiB,
        multipart_chunksize=5 * MiB,
    )
    store = S3Store(s3_bucket, "flaky", config=config)
    blobs = {f"blobs/{i:03d}.bin": os.urandom(256 + i * 97) for i in range(60)}
    docs = {f"docs/{i:02d}.json": {"index": i, "name": f"doc-{i}"} for i in range(15)}
    files = {}
    for i in range(4):
        path = tmp_path / f"file-{i}.safetensors"
        path.write_bytes(os.urandom(20_000 + i))
        files[f"files/{i}.safetensors"] = path
    big = tmp_path / "big.safetensors"
    big.write_bytes(os.urandom(11 * MiB))
    files["files/big.safetensors"] = big

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: store.put_bytes(*kv), blobs.items()))
        list(pool.map(lambda kv: store.put_json(*kv), docs.items()))
        list(pool.map(lambda kv: store.put_file(*kv), files.items()))

        assert list(pool.map(store.get_bytes, blobs)) == list(blobs.values())
        assert list(pool.map(store.get_json, docs)) == list(docs.values())
        downloaded = list(pool.map(lambda key: store.get_file(key, tmp_path / "down" / key), files))
        for path, source in zip(downloaded, files.values(), strict=True):
            assert path.read_bytes() == source.read_bytes()

        assert store.list() == sorted([*blobs, *docs, *files])
        moved = [f"blobs/{i:03d}.bin" for i in range(10)]
        list(pool.map(lambda key: store.move(key, key.replace("blobs/", "archive/")), moved))
        list(pool.map(store.delete, [f"blobs/{i:03d}.bin" for i in range(10, 20)]))
        claims = list(pool.map(lambda i: store.put_if_absent(f"locks/{i % 5}", b"x"), range(20)))
        assert claims.count(True) == 5

    stats = flaky_s3_proxy.stats
    assert stats.failed_before >= 0.1 * stats.requests, stats  # faults really happened
    assert store.list("archive/") == [key.replace("blobs/", "archive/") for key in moved]
    for key in moved:
        assert store.get_bytes(key.replace("blobs/", "archive/")) == blobs[key]

    contents = verify_bucket_directly(moto_s3, s3_bucket)  # every object verifies
    assert len(contents) == len(blobs) + len(docs) + len(files) - 10 + 5


def test_idempotent_operations_survive_lost_responses(moto_s3: MotoS3, s3_bucket: str) -> None:
    """Requests that reached the server but whose answer was lost are retried safely."""
    with FlakyProxy(
        moto_s3.endpoint_url, failure_rate=0.05, lost_response_rate=0.15, seed=99
    ) as proxy:
        store = S3Store(
            s3_bucket, config=S3Config(endpoint_url=proxy.endpoint_url, retry_backoff=0.01)
        )
        for i in range(16):
            store.put_bytes(f"q/pending/{i:02d}", f"record {i}".encode())
        for i in range(0, 16, 2):
            store.move(f"q/pending/{i:02d}", f"q/applied/{i:02d}")
        for i in range(1, 16, 4):
            store.delete(f"q/pending/{i:02d}")
        assert [store.put_if_absent(f"lease/{i}", b"x") for i in range(6)] == [True] * 6
        assert [store.put_if_absent(f"lease/{i}", b"y") for i in range(6)] == [False] * 6
        assert proxy.stats.lost_responses >= 5
    assert store.list("q/applied/") == [f"q/applied/{i:02d}" for i in range(0, 16, 2)]
    assert store.list("q/pending/") == [f"q/pending/{i:02d}" for i in (3, 7, 11, 15)]
    verify_bucket_directly(moto_s3, s3_bucket)


def test_corrupted_downloads_are_retried(moto_s3: MotoS3, s3_bucket: str, tmp_path: Path) -> None:
    with FlakyProxy(moto_s3.endpoint_url, failure_rate=0.0, corrupt_rate=0.3, seed=5) as proxy:
        store = S3Store(
            s3_bucket, config=S3Config(endpoint_url=proxy.endpoint_url, retry_backoff=0.01)
        )
        payloads = {f"k{i}": os.urandom(2000) for i in range(30)}
        for key, data in payloads.items():
            store.put_bytes(key, data)
        for key, data in payloads.items():
            assert store.get_bytes(key) == data
            assert store.get_file(key, tmp_path / key).read_bytes() == data
        assert proxy.stats.corrupted > 5


def test_persistent_corruption_in_transit(
    moto_s3: MotoS3, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FlakyProxy(moto_s3.endpoint_url, failure_rate=0.0, corrupt_rate=1.0) as proxy:
        store = S3Store(
            s3_bucket, config=S3Config(endpoint_url=proxy.endpoint_url, retry_backoff=0.01)
        )
        store.put_bytes("k", b"payload" * 100)
        # botocore's CRC32 response validation notices first ...
        with pytest.raises(ChecksumMismatchError) as info:
            store.get_bytes("k")
        assert info.value.key == "k" and info.value.attempts == 3
        # ... and with it switched off (a standard AWS setting), our sha256 does.
        monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
        store = S3Store(
            s3_bucket, config=S3Config(endpoint_url=proxy.endpoint_url, retry_backoff=0.01)
        )
        with pytest.raises(ChecksumMismatchError) as info:
            store.get_bytes("k")
        assert info.value.expected == hashlib.sha256(b"payload" * 100).hexdigest()
        assert info.value.actual not in (None, info.value.expected)
