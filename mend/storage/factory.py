"""``open_store``: turn a URI or path into an :class:`ArtifactStore`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .base import ArtifactStore
from .errors import InvalidStoreURIError
from .local import LocalStore
from .s3 import S3Config, S3Store, parse_s3_uri


def open_store(
    uri: str | os.PathLike[str],
    *,
    s3_config: S3Config | None = None,
    **local_options: Any,
) -> ArtifactStore:
    """Open the artifact store named by ``uri``.

    * ``s3://bucket`` or ``s3://bucket/prefix`` -> :class:`S3Store`, configured by
      boto3's usual environment/profile resolution plus ``s3_config``.
    * ``file:///abs/path``, ``file://localhost/abs/path``, or a plain path
      (relative paths resolve against the working directory) -> :class:`LocalStore`;
      ``local_options`` are passed to it (``create``, ``fsync``, ...) and
      ``s3_config`` is ignored, so callers can pass both unconditionally.

    Any other scheme raises :class:`InvalidStoreURIError`.
    """
    if isinstance(uri, os.PathLike):
        return LocalStore(Path(uri), **local_options)
    if not isinstance(uri, str) or not uri:
        raise InvalidStoreURIError(f"store URI must be a non-empty string or path, got {uri!r}")
    if uri.startswith("s3://"):
        if local_options:
            raise InvalidStoreURIError(
                f"options {sorted(local_options)} only apply to local stores; use s3_config"
            )
        bucket, prefix = parse_s3_uri(uri)
        return S3Store(bucket, prefix, config=s3_config)
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidStoreURIError(f"file:// URI with a remote host is not supported: {uri!r}")
        if parts.query or parts.fragment:
            raise InvalidStoreURIError(f"file:// URI must not have a query or fragment: {uri!r}")
        return LocalStore(Path(unquote(parts.path)), **local_options)
    if "://" in uri:
        raise InvalidStoreURIError(
            f"unsupported store URI {uri!r}: expected s3://bucket[/prefix], file:///path or a path"
        )
    return LocalStore(Path(uri), **local_options)
