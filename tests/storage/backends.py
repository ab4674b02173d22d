"""Helpers for the storage tests: each backend plus ways to reach behind its back."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mend.storage import ArtifactStore, LocalStore, S3Config, S3Store
from mend.storage.obstore_store import ObstoreStore
from tests.support.s3 import MotoS3

FAST_S3 = S3Config(retry_backoff=0.01)
"""Quick re-download backoff so checksum-failure tests stay fast."""


@dataclass
class Backend:
    """A store under test plus ways to reach behind its back."""

    name: str
    store: ArtifactStore
    tamper: Callable[[str, bytes], None]
    """Replace a key's bytes, keeping its recorded checksum (simulated bit rot)."""
    strip_checksum: Callable[[str], None]
    """Remove a key's recorded checksum, as if written by another tool."""
    reopen: Callable[..., ArtifactStore]
    """Open the same store again with other options (``require_checksum``...)."""


def local_backend(root: Path) -> Backend:
    store = LocalStore(root)

    def tamper(key: str, data: bytes) -> None:
        store.path_for(key).write_bytes(data)

    def strip_checksum(key: str) -> None:
        (root / ".mend-store" / "sha256" / key).unlink()

    def reopen(**options: Any) -> ArtifactStore:
        return LocalStore(root, **options)

    return Backend("local", store, tamper, strip_checksum, reopen)


def s3_backend(moto: MotoS3, bucket: str, prefix: str = "team/artifacts") -> Backend:
    store = S3Store(bucket, prefix, config=FAST_S3)
    client = moto.client()

    def tamper(key: str, data: bytes) -> None:
        object_key = store.prefix + key
        metadata = client.head_object(Bucket=bucket, Key=object_key)["Metadata"]
        client.put_object(Bucket=bucket, Key=object_key, Body=data, Metadata=metadata)

    def strip_checksum(key: str) -> None:
        object_key = store.prefix + key
        body = client.get_object(Bucket=bucket, Key=object_key)["Body"].read()
        client.put_object(Bucket=bucket, Key=object_key, Body=body)

    def reopen(**options: Any) -> ArtifactStore:
        return S3Store(bucket, prefix, config=dataclasses.replace(FAST_S3, **options))

    return Backend("s3", store, tamper, strip_checksum, reopen)


def obstore_local_backend(root: Path) -> Backend:
    """The obstore sibling on a directory: same layout (object files, JSON sidecars)."""
    store = ObstoreStore.local(root)

    def tamper(key: str, data: bytes) -> None:
        root.joinpath(*key.split("/")).write_bytes(data)

    def strip_checksum(key: str) -> None:
        (root / ".mend-store" / "sha256" / key).unlink()

    def reopen(**options: Any) -> ArtifactStore:
        return ObstoreStore.local(root, **options)

    return Backend("obstore-local", store, tamper, strip_checksum, reopen)


def obstore_s3_backend(moto: MotoS3, bucket: str, prefix: str = "team/artifacts") -> Backend:
    """The obstore sibling on S3: same object layout (sha256 in the user metadata)."""
    backend = s3_backend(moto, bucket, prefix)
    store = ObstoreStore.s3(bucket, prefix)

    def reopen(**options: Any) -> ArtifactStore:
        return ObstoreStore.s3(bucket, prefix, **options)

    return Backend("obstore-s3", store, backend.tamper, backend.strip_checksum, reopen)
