"""Artifact storage for datasets, editor checkpoints and published model versions.

One interface, :class:`ArtifactStore`, over a local directory
(:class:`LocalStore`) and S3-compatible object storage (:class:`S3Store`);
:func:`open_store` picks the backend from a URI::

    store = open_store("s3://mend-artifacts/prod")   # or "/data/artifacts", "file:///..."
    store.put_file("editors/gpt2/v3/model.safetensors", "out/model.safetensors")
    store.put_json("editors/gpt2/v3/meta.json", {"step": 1200})
    if store.put_if_absent("locks/apply-batch-7", b"worker-3"):
        ...  # we hold the lock

The store moves bytes and files only (safetensors, JSON, JSONL), never pickles.
Every object's sha256 is recorded on write and verified on read.
"""

from .base import (
    READ_AT_ONCE,
    ArtifactInfo,
    ArtifactStore,
    sha256_bytes,
    sha256_file,
    validate_key,
    validate_prefix,
)
from .errors import (
    ArtifactNotFoundError,
    BucketNotFoundError,
    ChecksumMismatchError,
    InvalidKeyError,
    InvalidStoreURIError,
    StorageError,
    UntrustedObjectError,
)
from .factory import STORE_ENV, open_store, resolve_store_uri
from .local import LocalStore
from .s3 import S3Config, S3Store

__all__ = [
    "READ_AT_ONCE",
    "ArtifactInfo",
    "ArtifactNotFoundError",
    "ArtifactStore",
    "BucketNotFoundError",
    "ChecksumMismatchError",
    "InvalidKeyError",
    "InvalidStoreURIError",
    "LocalStore",
    "S3Config",
    "S3Store",
    "STORE_ENV",
    "StorageError",
    "UntrustedObjectError",
    "open_store",
    "resolve_store_uri",
    "sha256_bytes",
    "sha256_file",
    "validate_key",
    "validate_prefix",
]
