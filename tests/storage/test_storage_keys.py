"""Key rules, URI parsing, error types, and property-based round trips."""

from __future__ import annotations

import pickle
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mend.storage import (
    ArtifactNotFoundError,
    ArtifactStore,
    BucketNotFoundError,
    ChecksumMismatchError,
    InvalidKeyError,
    InvalidStoreURIError,
    LocalStore,
    S3Store,
    StorageError,
    open_store,
    sha256_bytes,
    validate_key,
    validate_prefix,
)
from mend.storage.base import Recorded

# ---------------------------------------------------------------- the base class checks for every backend


class _Recording(ArtifactStore):
    """A dictionary backend that records every key its primitives receive."""

    def __init__(self, names=()):
        self.objects = {name: (b"", "") for name in names}
        self.seen: list[str] = []

    uri = "memory://"

    def _uri_for(self, key):
        self.seen.append(key)
        return f"memory://{key}"

    def _put_bytes(self, key, data, sha256):
        self.seen.append(key)
        self.objects[key] = (bytes(data), sha256)

    def _read_bytes(self, key):
        self.seen.append(key)
        data, sha256 = self.objects[key]
        return data, Recorded(sha256)

    _put_file = _download = _info = _move = _put_if_absent = None

    def _exists(self, key):
        self.seen.append(key)
        return key in self.objects

    def _delete(self, key):
        self.seen.append(key)
        self.objects.pop(key, None)

    def _names(self, prefix):
        return list(self.objects)  # unsorted, unfiltered: the base class filters and sorts


@pytest.mark.parametrize("call", ["put_bytes", "get_bytes", "exists", "delete", "uri_for", "get_unverified"])
def test_an_invalid_key_never_reaches_a_backend(call: str) -> None:
    store = _Recording()
    arguments = ("a//b", b"x") if call == "put_bytes" else ("a//b",)
    with pytest.raises(InvalidKeyError):
        getattr(store, call)(*arguments)
    assert store.seen == []


def test_list_keeps_valid_keys_under_the_prefix_sorted() -> None:
    store = _Recording(["runs/b", "runs2/a", "folder/", ".mend-store/x", "runs/a", "other"])
    assert store.list("runs") == ["runs/a", "runs/b", "runs2/a"]
    assert store.list("runs/") == ["runs/a", "runs/b"]
    assert store.list() == ["other", "runs/a", "runs/b", "runs2/a"]
    store.put_json("runs/c", {"k": 1})
    assert store.get_json("runs/c") == {"k": 1} and store.seen == ["runs/c", "runs/c"]


def test_the_base_class_verifies_what_a_backend_reads() -> None:
    store = _Recording()
    store.put_bytes("a", b"payload")
    assert store.objects["a"][1] == sha256_bytes(b"payload")  # the digest a backend records
    store.objects["a"] = (b"tampered", store.objects["a"][1])
    with pytest.raises(ChecksumMismatchError):
        store.get_bytes("a")
    assert store.seen.count("a") == 1 + store._read_attempts  # the write, then every read


# ---------------------------------------------------------------- key rules


@pytest.mark.parametrize(
    "key",
    [
        "a",
        "a/b/c.json",
        "datasets/zsre/train.jsonl",
        ".hidden",
        "a/.mend-store",
        "ü/✓ x",
        "a..b",
        "x" * 200,
    ],
)
def test_valid_keys(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/a",
        "a/",
        "a//b",
        ".",
        "..",
        "a/./b",
        "a/../b",
        "a\\b",
        "a\nb",
        "\x7f",
        ".mend-store",
        ".mend-store/x",
        "x" * 1000,
        "\udc80",
        42,
        None,
        b"a",
    ],
)
def test_invalid_keys(key: object) -> None:
    with pytest.raises(InvalidKeyError):
        validate_key(key)


@pytest.mark.parametrize("prefix", ["", "a", "a/", "a/b", "a/b/", "runs/ex", ".mend", "a/."])
def test_valid_prefixes(prefix: str) -> None:
    assert validate_prefix(prefix) == prefix


@pytest.mark.parametrize(
    "prefix", ["/", "/a", "a//", "../a", "a/../", ".mend-store/", ".mend-store/x", "a\\"]
)
def test_invalid_prefixes(prefix: str) -> None:
    with pytest.raises(InvalidKeyError):
        validate_prefix(prefix)


# ---------------------------------------------------------------- open_store


def test_open_store_local_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for uri in (
        str(tmp_path / "a"),
        tmp_path / "a",
        (tmp_path / "a").as_uri(),
        f"file://localhost{tmp_path}/a",
    ):
        store = open_store(uri)
        assert isinstance(store, LocalStore)
        assert store.root == tmp_path / "a"
        assert store.uri == (tmp_path / "a").as_uri()
    monkeypatch.chdir(tmp_path)
    relative = open_store("rel/store")
    assert isinstance(relative, LocalStore) and relative.root == tmp_path / "rel" / "store"
    quoted = open_store((tmp_path / "with space").as_uri())
    assert isinstance(quoted, LocalStore) and quoted.root == tmp_path / "with space"
    assert isinstance(open_store(tmp_path / "nofsync", fsync=False), LocalStore)


def test_open_store_s3_forms() -> None:
    store = open_store("s3://bucket-name/a/b/")
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.uri) == (
        "bucket-name",
        "a/b/",
        "s3://bucket-name/a/b",
    )
    assert store.uri_for("x/y") == "s3://bucket-name/a/b/x/y"
    bare = open_store("s3://bucket-name")
    assert (
        isinstance(bare, S3Store)
        and bare.prefix == ""
        and bare.uri_for("k") == "s3://bucket-name/k"
    )


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "s3://",
        "s3:///prefix",
        "s3://b/a//b",
        "gs://bucket/x",
        "http://host/x",
        "file://remote/x",
        "file:///x?y=1",
    ],
)
def test_open_store_rejects(uri: str) -> None:
    with pytest.raises(InvalidStoreURIError):
        open_store(uri)


def test_open_store_rejects_local_options_for_s3() -> None:
    with pytest.raises(InvalidStoreURIError):
        open_store("s3://bucket/x", fsync=False)


# ---------------------------------------------------------------- errors


def test_error_hierarchy_and_pickling() -> None:
    errors: list[StorageError] = [
        ArtifactNotFoundError("a/b", "s3://x/a/b"),
        BucketNotFoundError("bkt"),
        ChecksumMismatchError("k", "00", "11", 3),
        ChecksumMismatchError("k", None, None, 2, detail="transfer checksum failed"),
        InvalidKeyError("a//b", "empty path segment"),
        InvalidStoreURIError("bad"),
    ]
    for error in errors:
        clone = pickle.loads(pickle.dumps(error))  # Prefect ships exceptions between processes
        assert type(clone) is type(error)
        assert str(clone) == str(error)
        assert vars(clone) == vars(error)
    assert isinstance(errors[0], KeyError)
    assert str(errors[0]) == "artifact not found: 'a/b' (s3://x/a/b)"
    assert isinstance(errors[4], ValueError) and isinstance(errors[5], ValueError)


# ---------------------------------------------------------------- properties

segment = st.text(alphabet=st.sampled_from("abcXYZ019-_.~ äé✓+=@"), min_size=1, max_size=8).filter(
    lambda s: s not in (".", "..")
)
keys = st.lists(segment, min_size=1, max_size=3).map("/".join)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(entries=st.dictionaries(keys, st.binary(max_size=64), min_size=1, max_size=6))
def test_round_trip_and_order_for_generated_keys(
    store: ArtifactStore, entries: dict[str, bytes]
) -> None:
    # A key can't also be a "directory" of other keys on a filesystem; skip those sets.
    names = set(entries)
    if any(other.startswith(name + "/") for name in names for other in names):
        return
    base = f"p{uuid.uuid4().hex[:8]}/"
    for key, data in entries.items():
        store.put_bytes(base + key, data)
    assert store.list(base) == sorted(base + key for key in entries)
    for key, data in entries.items():
        assert store.get_bytes(base + key) == data
