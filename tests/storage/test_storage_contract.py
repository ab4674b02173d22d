"""Behaviour every ArtifactStore must have; runs against the local and the S3 backend."""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mend.storage import (
    ArtifactNotFoundError,
    ArtifactStore,
    ChecksumMismatchError,
    InvalidKeyError,
    open_store,
)
from tests.storage.backends import Backend

# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "data",
    [b"", b"hello", bytes(range(256)) * 3, os.urandom(300_000)],
    ids=["empty", "ascii", "all-bytes", "300k-random"],
)
def test_bytes_round_trip(store: ArtifactStore, data: bytes) -> None:
    store.put_bytes("blobs/x.bin", data)
    assert store.get_bytes("blobs/x.bin") == data


def test_accepts_bytearray_and_memoryview(store: ArtifactStore) -> None:
    store.put_bytes("a", bytearray(b"abc"))
    store.put_bytes("b", memoryview(b"xyz123")[1:4])
    assert store.get_bytes("a") == b"abc"
    assert store.get_bytes("b") == b"yz1"


def test_put_overwrites(store: ArtifactStore) -> None:
    store.put_bytes("k", b"first")
    store.put_bytes("k", b"second, longer")
    assert store.get_bytes("k") == b"second, longer"
    assert store.list() == ["k"]


def test_json_round_trip(store: ArtifactStore) -> None:
    doc = {"model": "gpt2", "step": 1200, "lr": 1e-4, "tags": ["ä", "✓"], "nested": {"ok": True}}
    store.put_json("meta/run.json", doc)
    assert store.get_json("meta/run.json") == doc


def test_json_rejects_nan(store: ArtifactStore) -> None:
    with pytest.raises(ValueError):
        store.put_json("bad.json", {"loss": float("nan")})
    assert not store.exists("bad.json")


def test_file_round_trip(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "model.safetensors"
    source.write_bytes(os.urandom(200_000))
    store.put_file("ckpt/model.safetensors", source)
    dest = store.get_file("ckpt/model.safetensors", tmp_path / "out" / "deep" / "m.safetensors")
    assert dest == tmp_path / "out" / "deep" / "m.safetensors"
    assert dest.read_bytes() == source.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["m.safetensors"]  # no temp leftovers


def test_get_file_replaces_existing_destination(store: ArtifactStore, tmp_path: Path) -> None:
    store.put_bytes("k", b"new")
    dest = tmp_path / "k.bin"
    dest.write_bytes(b"old old old")
    store.get_file("k", dest)
    assert dest.read_bytes() == b"new"


def test_info_and_exists(store: ArtifactStore) -> None:
    assert not store.exists("x/y")
    store.put_bytes("x/y", b"12345")
    assert store.exists("x/y")
    assert not store.exists("x")  # a "directory" is not a key
    info = store.info("x/y")
    assert (info.key, info.size) == ("x/y", 5)
    assert info.sha256 == hashlib.sha256(b"12345").hexdigest()


# ---------------------------------------------------------------- listing


def test_list_sorted_with_prefixes(store: ArtifactStore) -> None:
    keys = ["runs/b/2", "runs/a/1", "runs2/x", "runs/a/10", "z", "a", "runs/a/1.json", "é/k"]
    for key in keys:
        store.put_bytes(key, key.encode())
    assert store.list() == sorted(keys)
    assert store.list("runs/") == ["runs/a/1", "runs/a/1.json", "runs/a/10", "runs/b/2"]
    assert store.list("runs") == ["runs/a/1", "runs/a/1.json", "runs/a/10", "runs/b/2", "runs2/x"]
    assert store.list("runs/a/1") == ["runs/a/1", "runs/a/1.json", "runs/a/10"]
    assert store.list("runs/a/1/") == []
    assert store.list("nothing/") == []
    assert store.list("é") == ["é/k"]


def test_list_empty_store(store: ArtifactStore) -> None:
    assert store.list() == []


# ---------------------------------------------------------------- delete / move


def test_delete(store: ArtifactStore) -> None:
    store.put_bytes("q/pending/1", b"a")
    store.put_bytes("q/pending/2", b"b")
    store.delete("q/pending/1")
    assert not store.exists("q/pending/1")
    assert store.list() == ["q/pending/2"]
    store.delete("q/pending/1")  # idempotent
    store.delete("never/existed")
    with pytest.raises(ArtifactNotFoundError):
        store.get_bytes("q/pending/1")


def test_delete_then_recreate_under_same_dir(store: ArtifactStore) -> None:
    store.put_bytes("d/only", b"1")
    store.delete("d/only")
    store.put_bytes("d/only", b"2")
    assert store.get_bytes("d/only") == b"2"


def test_move(store: ArtifactStore) -> None:
    store.put_json("queue/pending/0001.json", {"edit": 1})
    store.move("queue/pending/0001.json", "queue/applied/0001.json")
    assert not store.exists("queue/pending/0001.json")
    assert store.get_json("queue/applied/0001.json") == {"edit": 1}
    assert store.list("queue/") == ["queue/applied/0001.json"]
    assert store.info("queue/applied/0001.json").sha256 is not None


def test_move_overwrites_destination(store: ArtifactStore) -> None:
    store.put_bytes("src", b"new contents")
    store.put_bytes("dst", b"old")
    store.move("src", "dst")
    assert store.get_bytes("dst") == b"new contents"
    assert store.list() == ["dst"]


def test_move_to_itself_is_a_no_op(store: ArtifactStore) -> None:
    store.put_bytes("same", b"1")
    store.move("same", "same")
    assert store.get_bytes("same") == b"1"


def test_move_missing_source(store: ArtifactStore) -> None:
    with pytest.raises(ArtifactNotFoundError) as info:
        store.move("queue/pending/missing", "queue/applied/missing")
    assert info.value.key == "queue/pending/missing"
    assert not store.exists("queue/applied/missing")


# ---------------------------------------------------------------- put_if_absent


def test_put_if_absent(store: ArtifactStore) -> None:
    assert store.put_if_absent("locks/job", b"owner-1") is True
    assert store.put_if_absent("locks/job", b"owner-2") is False
    assert store.get_bytes("locks/job") == b"owner-1"
    store.delete("locks/job")
    assert store.put_if_absent("locks/job", b"owner-3") is True
    assert store.get_bytes("locks/job") == b"owner-3"


def test_put_if_absent_race(store: ArtifactStore) -> None:
    contenders = 8
    for round_number in range(3):
        key = f"locks/race-{round_number}"
        barrier = threading.Barrier(contenders)

        def contend(worker: int, key: str = key, barrier: threading.Barrier = barrier) -> bool:
            barrier.wait()
            return store.put_if_absent(key, f"worker-{worker}".encode())

        with ThreadPoolExecutor(contenders) as pool:
            results = list(pool.map(contend, range(contenders)))
        assert results.count(True) == 1, results
        winner = results.index(True)
        assert store.get_bytes(key) == f"worker-{winner}".encode()


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("operation", ["get_bytes", "get_json", "get_file", "info"])
def test_missing_key(store: ArtifactStore, tmp_path: Path, operation: str) -> None:
    args = (tmp_path / "out",) if operation == "get_file" else ()
    with pytest.raises(ArtifactNotFoundError) as info:
        getattr(store, operation)("no/such/key", *args)
    assert info.value.key == "no/such/key"
    assert "no/such/key" in str(info.value)
    assert isinstance(info.value, KeyError)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "key",
    ["", "/abs", "trailing/", "a//b", "a/../b", "./a", "back\\slash", "nul\x00", ".mend-store/x"],
)
def test_invalid_keys_rejected(store: ArtifactStore, key: str) -> None:
    with pytest.raises(InvalidKeyError):
        store.put_bytes(key, b"x")
    with pytest.raises(InvalidKeyError):
        store.get_bytes(key)
    assert store.list() == []


# ---------------------------------------------------------------- integrity


def test_corruption_detected(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    store.put_bytes("weights/model.safetensors", b"A" * 1000)
    store.put_json("meta.json", {"a": 1})
    backend.tamper("weights/model.safetensors", b"A" * 999 + b"B")
    backend.tamper("meta.json", b'{"a": 2}')

    with pytest.raises(ChecksumMismatchError) as info:
        store.get_bytes("weights/model.safetensors")
    error = info.value
    assert error.key == "weights/model.safetensors"
    assert "weights/model.safetensors" in str(error)
    assert error.expected == hashlib.sha256(b"A" * 1000).hexdigest()
    assert error.actual == hashlib.sha256(b"A" * 999 + b"B").hexdigest()
    assert error.attempts == 3  # retried before giving up

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    dest = downloads / "model.safetensors"
    dest.write_bytes(b"previous download")
    with pytest.raises(ChecksumMismatchError):
        store.get_file("weights/model.safetensors", dest)
    assert dest.read_bytes() == b"previous download"  # untouched
    assert [p.name for p in downloads.iterdir()] == ["model.safetensors"]  # no temp leftovers

    with pytest.raises(ChecksumMismatchError):
        store.get_json("meta.json")
    with pytest.raises(ChecksumMismatchError):
        store.download_dir("weights", tmp_path / "dl")


def test_reading_many_documents_keeps_each_ones_outcome(backend: Backend) -> None:
    # One bad document hides none of the others: each comes back with its own error.
    store = backend.store
    for i in range(20):
        store.put_json(f"docs/{i:02d}.json", {"i": i})
    store.put_bytes("docs/garbled.json", b"\xff not json")
    backend.tamper("docs/05.json", b'{"i": 555}')
    keys = [*store.list("docs/"), "docs/missing.json"]
    read = list(store.get_json_many(keys))
    assert [key for key, _ in read] == keys
    found = dict(read)
    assert isinstance(found["docs/05.json"], ChecksumMismatchError)
    assert isinstance(found["docs/garbled.json"], ValueError)
    assert isinstance(found["docs/missing.json"], ArtifactNotFoundError)
    assert [found[f"docs/{i:02d}.json"] for i in range(20) if i != 5] == [{"i": i} for i in range(20) if i != 5]
    with pytest.raises(InvalidKeyError):
        list(store.get_json_many(["docs/../escape.json"]))


def test_missing_checksum(backend: Backend) -> None:
    backend.store.put_bytes("foreign.bin", b"written by another tool")
    backend.strip_checksum("foreign.bin")
    with pytest.raises(ChecksumMismatchError) as info:
        backend.store.get_bytes("foreign.bin")
    assert info.value.expected is None
    assert "no sha256" in str(info.value)
    lenient = backend.reopen(require_checksum=False)
    assert lenient.get_bytes("foreign.bin") == b"written by another tool"
    assert lenient.info("foreign.bin").sha256 is None


def test_rewrite_heals_corruption(backend: Backend) -> None:
    backend.store.put_bytes("k", b"good")
    backend.tamper("k", b"evil")
    backend.store.put_bytes("k", b"fresh")
    assert backend.store.get_bytes("k") == b"fresh"


# ---------------------------------------------------------------- uris and directories


def test_uri_round_trip(store: ArtifactStore) -> None:
    store.put_bytes("data/x.jsonl", b"{}\n")
    uri = store.uri_for("data/x.jsonl")
    assert uri.startswith(("file:///", "s3://"))
    assert uri.endswith("/data/x.jsonl")
    assert uri == store.uri + "/data/x.jsonl"
    again = open_store(store.uri)
    assert type(again) is type(store)
    assert again.get_bytes("data/x.jsonl") == b"{}\n"


def test_upload_and_download_dir(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "ckpt"
    files = {
        "config.json": b'{"d": 1}',
        "model-00001.safetensors": os.urandom(5000),
        "sub/tokenizer.json": b"tok",
        "sub/deeper/notes.txt": b"",
    }
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    keys = store.upload_dir(src, "editors/v1")
    assert keys == sorted(f"editors/v1/{rel}" for rel in files)
    store.put_bytes("editors/v10/other", b"not part of v1")

    out = tmp_path / "restored"
    paths = store.download_dir("editors/v1", out)
    assert sorted(p.relative_to(out).as_posix() for p in paths) == sorted(files)
    for rel, data in files.items():
        assert (out / rel).read_bytes() == data
    assert not (out / "other").exists()

    # A trailing slash means the same; "" is the whole store.
    assert len(store.download_dir("editors/v1/", tmp_path / "again")) == len(files)
    assert len(store.download_dir("", tmp_path / "all")) == len(files) + 1


def test_upload_dir_validates_before_uploading(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "bad"
    src.mkdir()
    (src / "ok.txt").write_bytes(b"1")
    (src / "back\\slash").write_bytes(b"2")
    with pytest.raises(InvalidKeyError):
        store.upload_dir(src, "p")
    assert store.list() == []


def test_readers_never_see_a_torn_or_unverifiable_object(store: ArtifactStore) -> None:
    versions = [b"a" * 100_000, b"b" * 50_000, b"c" * 7]
    store.put_bytes("hot", versions[0])
    done = threading.Event()
    seen: list[bytes] = []
    errors: list[BaseException] = []

    def read() -> None:
        while not done.is_set():
            try:
                seen.append(store.get_bytes("hot"))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
                return

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        for i in range(30):
            store.put_bytes("hot", versions[i % 3])
    finally:
        done.set()
        for reader in readers:
            reader.join()
    assert errors == []
    assert seen and set(seen) <= set(versions)
