"""Artifact store over S3 or any S3-compatible service (MinIO, Ceph RGW, moto...).

Configuration is boto3's own: the endpoint comes from ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` (or ``endpoint_url`` in the profile), credentials and region
from the usual environment variables, ``AWS_PROFILE`` or the shared config
files. :class:`S3Config` only adds explicit overrides and the retry/transfer
knobs; nothing here re-reads those variables.

Integrity: each object carries its hex sha256 in the user metadata entry
``sha256`` (header ``x-amz-meta-sha256``). Downloads recompute it and retry on a
mismatch before raising :class:`ChecksumMismatchError`. In flight, botocore's
own CRC checksums also apply where the service supports them.

Retries: botocore retries every request in ``standard`` mode (exponential
backoff with jitter, 5xx/throttling/connection errors) up to
``S3Config.max_attempts`` attempts. On top of that this module retries whole
downloads on a checksum mismatch or a connection dropped mid-body, which
botocore does not retry.

Large files go through boto3's managed transfers (:class:`TransferConfig`):
multipart upload, ranged parallel download and multipart copy above
``multipart_threshold``.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, TypeVar

import boto3
import botocore.exceptions
import botocore.loaders
import botocore.session
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from s3transfer.exceptions import RetriesExceededError

from .base import (
    ArtifactInfo,
    ArtifactStore,
    Bytes,
    Recorded,
    RetryRead,
    sha256_file,
    validate_key,
)
from .errors import (
    ArtifactNotFoundError,
    BucketNotFoundError,
    ChecksumMismatchError,
    InvalidKeyError,
    InvalidStoreURIError,
    StorageError,
)

MiB = 1024 * 1024

SHA256_METADATA = "sha256"
"""User-metadata entry holding an object's hex sha256."""

PUT_TOKEN_METADATA = "mend-put-token"
"""User-metadata entry identifying which ``put_if_absent`` call created an object."""

_T = TypeVar("_T")

# Errors raised while a response body is streamed; botocore does not retry these.
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    botocore.exceptions.HTTPClientError,  # ResponseStreamingError, ReadTimeoutError, ...
    botocore.exceptions.ConnectionError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.FlexibleChecksumError,
    RetriesExceededError,  # s3transfer gave up on a streaming download
)


class _ObjectChanged(Exception):
    """The object was replaced while it was being downloaded; the download is retried."""


_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404"}
_PRECONDITION_CODES = {"PreconditionFailed", "412"}
_CONFLICT_CODES = {"ConditionalRequestConflict", "409", "OperationAborted"}


@dataclass(frozen=True)
class S3Config:
    """Optional overrides and tuning for :class:`S3Store`.

    ``None`` means "let boto3 resolve it" (environment variables, ``AWS_PROFILE``,
    ``~/.aws/config``).
    """

    endpoint_url: str | None = None
    """Explicit endpoint; normally leave unset and use ``AWS_ENDPOINT_URL_S3``."""
    region_name: str | None = None
    profile_name: str | None = None
    addressing_style: Literal["auto", "virtual", "path"] | None = None

    max_attempts: int = 8
    """Total attempts per request (botocore ``standard`` retry mode), including the first."""
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_pool_connections: int = 32

    multipart_threshold: int = 64 * MiB
    """Files at least this large use multipart upload/copy and ranged parallel download."""
    multipart_chunksize: int = 16 * MiB
    """Part size; S3 (and boto3) use at least 5 MiB per part whatever is set here."""
    max_concurrency: int = 4
    """Threads per managed transfer."""

    checksum_retries: int = 2
    """Extra download attempts after a checksum mismatch or a dropped body."""
    retry_backoff: float = 0.1
    """Base delay in seconds (doubled per attempt, with jitter) between those attempts."""
    require_checksum: bool = True
    """If ``False``, objects without ``sha256`` metadata are returned unverified instead of failing."""

    def boto_config(self) -> BotoConfig:
        """The botocore client configuration these settings describe."""
        s3_options: dict[str, Any] = {}
        if self.addressing_style is not None:
            s3_options["addressing_style"] = self.addressing_style
        return BotoConfig(
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            max_pool_connections=self.max_pool_connections,
            s3=s3_options or None,
        )

    def transfer_config(self) -> TransferConfig:
        """The boto3 managed-transfer configuration these settings describe."""
        return TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.multipart_chunksize,
            max_concurrency=self.max_concurrency,
            use_threads=self.max_concurrency > 1,
        )


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/some/prefix`` into ``("bucket", "some/prefix")``."""
    if not uri.startswith("s3://"):
        raise InvalidStoreURIError(f"not an s3:// URI: {uri!r}")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise InvalidStoreURIError(f"S3 URI has no bucket: {uri!r}")
    prefix = prefix.strip("/")
    if prefix:
        try:
            validate_key(prefix)
        except InvalidKeyError as exc:
            raise InvalidStoreURIError(f"invalid prefix in S3 URI {uri!r}: {exc.reason}") from exc
    return bucket, prefix


class S3Store(ArtifactStore):
    """An :class:`ArtifactStore` over ``s3://bucket/prefix``. Thread-safe."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        config: S3Config | None = None,
        client: Any | None = None,
    ) -> None:
        """Open the store; no request is made until the first operation.

        :param prefix: key prefix inside the bucket (``"team/artifacts"``).
        :param config: overrides and tuning; defaults to :class:`S3Config()`.
        :param client: a ready boto3 S3 client to use instead of building one
            from ``config`` (its own retry settings then apply).
        """
        self._bucket = bucket
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self._prefix = f"{prefix}/" if prefix else ""
        self._config = config or S3Config()
        if client is None:
            session = _new_session(self._config.profile_name, self._config.region_name)
            client = session.client(
                "s3", endpoint_url=self._config.endpoint_url, config=self._config.boto_config()
            )
        self._client = client
        self._transfer = self._config.transfer_config()
        self._require_checksum = self._config.require_checksum
        self._read_attempts = self._config.checksum_retries + 1
        self._retry_backoff = self._config.retry_backoff
        self._bucket_confirmed = False

    # ------------------------------------------------------------------ identity
    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def prefix(self) -> str:
        """Key prefix inside the bucket, ``""`` or ending with ``/``."""
        return self._prefix

    @property
    def client(self) -> Any:
        """The underlying boto3 S3 client."""
        return self._client

    @property
    def uri(self) -> str:
        return f"s3://{self._bucket}/{self._prefix}".rstrip("/")

    def _uri_for(self, key: str) -> str:
        return f"s3://{self._bucket}/{self._object_key(key)}"

    def _object_key(self, key: str) -> str:
        return self._prefix + key

    # ------------------------------------------------------------------ writes
    def _put_bytes(self, key: str, data: Bytes, sha256: str) -> None:
        object_key = self._object_key(key)
        metadata = {SHA256_METADATA: sha256}
        self._call(
            key,
            lambda: self._client.put_object(
                Bucket=self._bucket, Key=object_key, Body=bytes(data), Metadata=metadata
            ),
        )

    def _put_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        object_key = self._object_key(key)
        path = os.fspath(local_path)
        metadata = {SHA256_METADATA: sha256_file(path)}
        self._call(
            key,
            lambda: self._client.upload_file(
                path,
                self._bucket,
                object_key,
                ExtraArgs={"Metadata": metadata},
                Config=self._transfer,
            ),
        )

    def _put_if_absent(self, key: str, data: Bytes, sha256: str) -> bool:
        object_key = self._object_key(key)
        token = uuid.uuid4().hex
        metadata = {SHA256_METADATA: sha256, PUT_TOKEN_METADATA: token}
        body = bytes(data)
        attempts = max(1, self._config.max_attempts)
        for attempt in range(attempts):
            try:
                self._client.put_object(
                    Bucket=self._bucket,
                    Key=object_key,
                    Body=body,
                    Metadata=metadata,
                    IfNoneMatch="*",
                )
                return True
            except botocore.exceptions.ClientError as exc:
                code, _ = _error_code(exc)
                if code in _PRECONDITION_CODES:
                    # botocore may have retried a request whose first attempt
                    # succeeded but whose response was lost: check who wrote it.
                    return self._created_by(key, token)
                if code not in _CONFLICT_CODES or attempt + 1 == attempts:
                    self._raise(exc, key)
                # A concurrent conditional write is in progress; S3 asks to retry.
                self._sleep(attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _created_by(self, key: str, token: str) -> bool:
        try:
            head = self._head(key)
        except ArtifactNotFoundError:
            return False  # it existed when we tried, and has been deleted since
        return head.get("Metadata", {}).get(PUT_TOKEN_METADATA) == token

    def _delete(self, key: str) -> None:
        object_key = self._object_key(key)
        self._call(key, lambda: self._client.delete_object(Bucket=self._bucket, Key=object_key))

    def _move(self, src_key: str, dst_key: str) -> None:
        src_object, dst_object = self._object_key(src_key), self._object_key(dst_key)
        head = self._head(src_key)
        if src_key == dst_key:
            return
        # Pin the version we looked at: a concurrent overwrite of the source
        # fails the copy instead of pairing new bytes with old metadata.
        self._call(
            dst_key,
            lambda: self._client.copy(
                {"Bucket": self._bucket, "Key": src_object},
                self._bucket,
                dst_object,
                ExtraArgs={"CopySourceIfMatch": head["ETag"]},
                Config=self._transfer,
            ),
            src_key=src_key,
        )
        copied = self._head(dst_key)
        expected = head.get("Metadata", {}).get(SHA256_METADATA)
        if (
            copied.get("ContentLength") != head.get("ContentLength")
            or copied.get("Metadata", {}).get(SHA256_METADATA) != expected
        ):
            raise StorageError(
                f"move {self._uri_for(src_key)} -> {self._uri_for(dst_key)}: the copy does not "
                "match the source (size or sha256 metadata differ); the source was kept"
            )
        self._call(src_key, lambda: self._client.delete_object(Bucket=self._bucket, Key=src_object))

    # ------------------------------------------------------------------ reads
    def _read_bytes(self, key: str) -> tuple[bytes, Recorded | None]:
        object_key = self._object_key(key)
        with self._retried(key):
            response = self._call(key, lambda: self._client.get_object(Bucket=self._bucket, Key=object_key))
            with contextlib.closing(response["Body"]) as body:
                return body.read(), Recorded.of(response.get("Metadata"))

    def _get_unverified(self, key: str) -> bytes:
        object_key = self._object_key(key)
        response = self._call(key, lambda: self._client.get_object(Bucket=self._bucket, Key=object_key))
        with contextlib.closing(response["Body"]) as body:
            return body.read()

    def _download(self, key: str, path: str) -> tuple[Recorded | None, str]:
        with self._retried(key):
            recorded = Recorded.of(self._head(key).get("Metadata"))
            try:
                self._client.download_file(self._bucket, self._object_key(key), path, Config=self._transfer)
            except botocore.exceptions.ClientError as exc:
                if _error_code(exc)[0] in _PRECONDITION_CODES:
                    # Overwritten during a ranged download (s3transfer pins the ETag).
                    raise _ObjectChanged(key) from exc
                self._raise(exc, key)
        return recorded, sha256_file(path)

    def _exists(self, key: str) -> bool:
        try:
            self._head(key)
        except ArtifactNotFoundError:
            return False
        return True

    def _info(self, key: str) -> ArtifactInfo:
        head = self._head(key)
        return ArtifactInfo(
            key=key,
            size=int(head.get("ContentLength", 0)),
            sha256=head.get("Metadata", {}).get(SHA256_METADATA),
        )

    def _names(self, prefix: str) -> builtins.list[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        names: builtins.list[str] = []

        def collect() -> None:
            names.clear()
            for page in paginator.paginate(Bucket=self._bucket, Prefix=self._prefix + prefix):
                names.extend(entry["Key"][len(self._prefix) :] for entry in page.get("Contents", []))

        self._call(prefix, collect)
        return names

    # ------------------------------------------------------------------ internals
    def _head(self, key: str) -> dict[str, Any]:
        object_key = self._object_key(key)
        return self._call(
            key, lambda: self._client.head_object(Bucket=self._bucket, Key=object_key)
        )

    @contextlib.contextmanager
    def _retried(self, key: str) -> Iterator[None]:
        """A connection dropped mid-body, or an object replaced mid-download, is worth
        another read (:meth:`ArtifactStore._verified` makes it); botocore retries neither."""
        try:
            yield
        except (*_TRANSIENT_ERRORS, _ObjectChanged) as exc:
            attempts = self._read_attempts
            if isinstance(exc, botocore.exceptions.FlexibleChecksumError):
                final: Exception = ChecksumMismatchError(key, None, None, attempts,
                                                         detail=f"transfer checksum failed: {exc}")
            else:
                final = StorageError(f"download of {self._uri_for(key)} failed after {attempts} attempts: {exc}")
            raise RetryRead(final) from exc

    def _sleep(self, attempt: int) -> None:
        time.sleep(self._config.retry_backoff * (2**attempt) * (0.5 + random.random()))

    def _call(self, key: str, func: Callable[[], _T], *, src_key: str | None = None) -> _T:
        """Run one S3 operation, translating its errors into :mod:`mend.storage.errors`."""
        try:
            return func()
        except botocore.exceptions.ClientError as exc:
            self._raise(exc, key, src_key=src_key)

    def _raise(
        self, exc: botocore.exceptions.ClientError, key: str, *, src_key: str | None = None
    ) -> NoReturn:
        code, status = _error_code(exc)
        if code == "NoSuchBucket":
            raise BucketNotFoundError(self._bucket) from exc
        if code in _NOT_FOUND_CODES or status == 404:
            # HEAD responses carry no error code: a 404 may mean a missing bucket.
            if not self._bucket_exists():
                raise BucketNotFoundError(self._bucket) from exc
            missing = src_key if src_key is not None else key
            raise ArtifactNotFoundError(missing, self._location(missing)) from exc
        if code in _PRECONDITION_CODES and src_key is not None:
            raise StorageError(
                f"move {self._location(src_key)}: the source changed while it was being copied"
            ) from exc
        message = exc.response.get("Error", {}).get("Message", "")
        raise StorageError(
            f"S3 request for {self._location(key)} failed: {code} {message}".rstrip()
        ) from exc

    def _location(self, key: str) -> str:
        """``s3://`` URI of a key or prefix, for messages (no validation)."""
        return f"s3://{self._bucket}/{self._prefix}{key}"

    def _bucket_exists(self) -> bool:
        if self._bucket_confirmed:
            return True
        try:
            self._client.head_bucket(Bucket=self._bucket)
        except botocore.exceptions.ClientError as exc:
            code, status = _error_code(exc)
            # Anything but "not found" (e.g. 403, no permission to ask): assume it exists.
            return not (code in ("NoSuchBucket", "NotFound", "404") or status == 404)
        self._bucket_confirmed = True
        return True


_loader_lock = threading.Lock()
_shared_loader: Any = None


def _new_session(profile_name: str | None, region_name: str | None) -> boto3.session.Session:
    """A fresh boto3 session (fresh credential and config resolution) whose
    service-model loader is shared process-wide: loading botocore's JSON models
    is most of the ~70 ms it takes to build an S3 client."""
    global _shared_loader
    with _loader_lock:
        if _shared_loader is None:
            _shared_loader = botocore.loaders.create_loader()
    core = botocore.session.get_session()
    core.register_component("data_loader", _shared_loader)
    return boto3.session.Session(
        botocore_session=core, profile_name=profile_name, region_name=region_name
    )


def _error_code(exc: botocore.exceptions.ClientError) -> tuple[str, int]:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(error.get("Code", "")), int(status or 0)
