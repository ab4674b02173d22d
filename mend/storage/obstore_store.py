"""The :class:`~mend.storage.base.ArtifactStore` contract over obstore (evaluated sibling).

``obstore`` (Python bindings of the Rust ``object_store`` crate) offers one API for a
local directory and S3, with conditional creation (``put(mode="create")``), retries and
multipart transfers built in. This module is the same contract as ``local.py`` and
``s3.py`` on top of it, to measure what it would take to replace them; it is opted into
with ``MEND_STORE_TRANSPORT=obstore`` (:func:`mend.storage.open_store` reads it) and is
not the default. ``docs/concepts/storage.md`` has the evaluation.

Checksums: every object's sha256 is recorded on write and verified on read, as in the
other backends, and where they keep it:

- S3: the user metadata entry ``sha256`` (``x-amz-meta-sha256``), so objects written by
  :class:`~mend.storage.s3.S3Store` read here and back.
- local: ``object_store``'s local filesystem stores no metadata (``put`` with attributes
  is "not implemented"), so the record is a JSON sidecar at
  ``.mend-store/sha256/<key>``, the layout of :class:`~mend.storage.local.LocalStore`.
  An object and its sidecar are two writes without a lock between them: a write first
  records a digest that accepts the old and the new bytes, then replaces the object,
  then records the new digest alone; a reader that meets a pair in between retries.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import obstore
from obstore.exceptions import AlreadyExistsError, PreconditionError
from obstore.store import LocalStore as ObLocalStore
from obstore.store import S3Store as ObS3Store

from .base import RESERVED_SEGMENT, ArtifactInfo, ArtifactStore, Bytes, Recorded, sha256_file
from .errors import ArtifactNotFoundError

SHA256_METADATA = "sha256"
SIDECARS = f"{RESERVED_SEGMENT}/sha256"


class ObstoreStore(ArtifactStore):
    """An artifact store whose bytes move through an obstore ``ObjectStore``.

    Open one with :meth:`local` or :meth:`s3` (or :func:`open_obstore` from a URI).
    """

    def __init__(self, inner: Any, uri: str, *, sidecars: bool, require_checksum: bool = True,
                 checksum_retries: int = 2, retry_backoff: float = 0.01):
        self._inner = inner
        self._uri = uri.rstrip("/")
        self._sidecars = sidecars
        self._require_checksum = require_checksum
        self._read_attempts = max(0, checksum_retries) + 1
        self._retry_backoff = retry_backoff
        # A local put_if_absent creates the object, then its sidecar: a reader can come
        # between the two, and a record missing then is worth another read.
        self._retry_unrecorded = sidecars

    @classmethod
    def local(cls, root: str | os.PathLike[str], *, create: bool = True, fsync: bool = True,
              **options: Any) -> ObstoreStore:
        """A store in the directory ``root`` (``fsync`` is accepted and not honoured:
        obstore's local writes are atomic renames without an fsync)."""
        path = Path(root).expanduser().absolute()
        if create:
            path.mkdir(parents=True, exist_ok=True)
        store = cls(ObLocalStore(path), path.as_uri(), sidecars=True, **options)
        store.read_at_once = 1  # local reads, as LocalStore's
        return store

    @classmethod
    def s3(cls, bucket: str, prefix: str = "", **options: Any) -> ObstoreStore:
        """A store under ``s3://bucket/prefix``; endpoint, region and credentials from the
        environment boto3 reads too (``AWS_ENDPOINT_URL_S3``, ``AWS_REGION``, ...)."""
        env = os.environ
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        config: dict[str, Any] = {}
        if endpoint:
            config["endpoint"] = endpoint
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        if region:
            config["region"] = region
        client = {"allow_http": True} if endpoint and endpoint.startswith("http://") else None
        inner = ObS3Store(bucket, prefix=prefix.strip("/") or None, config=config, client_options=client)
        uri = f"s3://{bucket}/{prefix.strip('/')}" if prefix.strip("/") else f"s3://{bucket}"
        return cls(inner, uri, sidecars=False, **options)

    # ------------------------------------------------------------------ identity
    @property
    def uri(self) -> str:
        return self._uri

    def _uri_for(self, key: str) -> str:
        return f"{self._uri}/{key}"

    # ------------------------------------------------------------------ writes
    def _put_bytes(self, key: str, data: Bytes, sha256: str) -> None:
        self._put(key, bytes(data), sha256)

    def _put_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        self._put(key, Path(local_path), sha256_file(local_path))

    def _put_if_absent(self, key: str, data: Bytes, sha256: str) -> bool:
        try:
            obstore.put(self._inner, key, bytes(data), mode="create", **self._attributes(sha256))
        except (AlreadyExistsError, PreconditionError):
            return False
        if self._sidecars:
            self._write_record(key, {SHA256_METADATA: sha256})
        return True

    def _delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            obstore.delete(self._inner, key)
        if self._sidecars:
            with contextlib.suppress(FileNotFoundError):
                obstore.delete(self._inner, f"{SIDECARS}/{key}")

    def _move(self, src_key: str, dst_key: str) -> None:
        if src_key == dst_key:
            self._info(src_key)
            return
        digest = self._info(src_key).sha256
        self._call(src_key, lambda: obstore.copy(self._inner, src_key, dst_key))  # S3 keeps metadata
        if self._sidecars and digest is not None:
            self._write_record(dst_key, {SHA256_METADATA: digest})
        self._delete(src_key)

    # ------------------------------------------------------------------ reads
    def _read_bytes(self, key: str) -> tuple[bytes, Recorded | None]:
        result, recorded = self._get(key)
        return bytes(result.bytes()), recorded

    def _get_unverified(self, key: str) -> bytes:
        return bytes(self._call(key, lambda: obstore.get(self._inner, key)).bytes())

    def _download(self, key: str, path: str) -> tuple[Recorded | None, str]:
        result, recorded = self._get(key)
        with open(path, "wb") as out:
            for chunk in result:
                out.write(chunk)
        return recorded, sha256_file(path)

    def _get(self, key: str) -> tuple[Any, Recorded | None]:
        """A get of ``key`` and its record: its sidecar (read first: a write records the
        new digest before it replaces the object) or its attributes."""
        sidecar = self._read_record(key) if self._sidecars else None
        result = self._call(key, lambda: obstore.get(self._inner, key))
        return result, Recorded.of(sidecar if self._sidecars else result.attributes)

    def _exists(self, key: str) -> bool:
        try:
            obstore.head(self._inner, key)
        except FileNotFoundError:
            return False
        return True

    def _info(self, key: str) -> ArtifactInfo:
        if self._sidecars:
            meta = self._call(key, lambda: obstore.head(self._inner, key))
            record = self._read_record(key)
            return ArtifactInfo(key, meta["size"], record[SHA256_METADATA] if record else None)
        result = self._call(key, lambda: obstore.get(self._inner, key, options={"head": True}))
        return ArtifactInfo(key, result.meta["size"], _digest_of(result.attributes))

    def _names(self, prefix: str) -> Iterator[str]:
        # object_store lists whole path segments ("runs" never matches "runs2/x"); the
        # contract's prefix is a plain string one, so list the enclosing folder (the
        # caller keeps what starts with the prefix).
        folder = prefix.rpartition("/")[0]
        for batch in obstore.list(self._inner, prefix=folder or None):
            for entry in batch:
                if entry["path"].split("/", 1)[0] != RESERVED_SEGMENT:
                    yield entry["path"]

    # ------------------------------------------------------------------ internals
    def _attributes(self, digest: str) -> dict[str, Any]:
        return {} if self._sidecars else {"attributes": {SHA256_METADATA: digest}}

    def _put(self, key: str, payload: bytes | Path, digest: str) -> None:
        if not self._sidecars:
            obstore.put(self._inner, key, payload, **self._attributes(digest))
            return
        # Accept the old and the new bytes while the object is replaced, then the new only.
        old = self._read_record(key)
        previous = [old[SHA256_METADATA], *old.get("previous", [])] if old else []
        if previous:
            self._write_record(key, {SHA256_METADATA: digest, "previous": previous})
        obstore.put(self._inner, key, payload)
        self._write_record(key, {SHA256_METADATA: digest})

    def _write_record(self, key: str, record: dict[str, Any]) -> None:
        obstore.put(self._inner, f"{SIDECARS}/{key}", json.dumps(record).encode())

    def _read_record(self, key: str) -> dict[str, Any] | None:
        try:
            record = json.loads(bytes(obstore.get(self._inner, f"{SIDECARS}/{key}").bytes()))
        except (FileNotFoundError, ValueError):
            return None
        return record if isinstance(record, dict) and isinstance(record.get(SHA256_METADATA), str) else None

    def _call(self, key: str, func):
        try:
            return func()
        except FileNotFoundError:
            raise ArtifactNotFoundError(key, self._uri_for(key)) from None


def _digest_of(attributes: dict[str, Any]) -> str | None:
    return attributes.get(SHA256_METADATA)


def open_obstore(uri: str | os.PathLike[str], **options: Any) -> ObstoreStore:
    """An :class:`ObstoreStore` for ``s3://bucket[/prefix]``, ``file:///path`` or a path."""
    from urllib.parse import unquote, urlsplit

    from .s3 import parse_s3_uri

    text = os.fspath(uri)
    if text.startswith("s3://"):
        bucket, prefix = parse_s3_uri(text)
        return ObstoreStore.s3(bucket, prefix, **options)
    parts = urlsplit(text)
    return ObstoreStore.local(unquote(parts.path) if parts.scheme == "file" else text, **options)
