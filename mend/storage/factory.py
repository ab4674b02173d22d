"""``open_store``: turn a URI or path into an :class:`ArtifactStore`; ``resolve_store_uri``:
which store a command or flow uses when none is named."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .base import ArtifactStore
from .errors import InvalidStoreURIError
from .local import LocalStore
from .s3 import S3Config, S3Store, parse_s3_uri

STORE_ENV = "MEND_STORE"
"""The one environment variable naming the artifact store, for the CLI, the flows and
the deployments alike."""

LEGACY_STORE_ENV = "MEND_STORAGE_URI"
"""The flows' former name for it; still read (with a warning) when ``MEND_STORE`` is unset."""

DEFAULT_STORE = "artifacts"

TRANSPORT_ENV = "MEND_STORE_TRANSPORT"
"""``obstore`` makes :func:`open_store` return the evaluated obstore backend."""


def resolve_store_uri(explicit: str | os.PathLike[str] | None = None) -> str:
    """The artifact store to use: ``explicit`` if given, else ``$MEND_STORE``, else ``artifacts``.

    Every entry point (``mend corrections``, the pipeline configuration's ``storage.uri:
    null``, the Prefect deployments) resolves the store here, so a correction submitted
    from a shell and the scheduled run that applies it name the same store.

    Raises :class:`InvalidStoreURIError` when the environment is ambiguous: ``MEND_STORE``
    and the former ``MEND_STORAGE_URI`` naming different stores, or a deployment
    placeholder (``{{ $MEND_STORE }}``) that ``prefect deploy`` could not fill.
    """
    if explicit is not None and os.fspath(explicit) != "":
        return os.fspath(explicit)
    value = os.environ.get(STORE_ENV, "").strip()
    legacy = os.environ.get(LEGACY_STORE_ENV, "").strip()
    for name, given in ((STORE_ENV, value), (LEGACY_STORE_ENV, legacy)):
        if "{{" in given:
            raise InvalidStoreURIError(
                f"{name} is {given!r}, a placeholder `prefect deploy` left unfilled: "
                f"export {STORE_ENV} before `prefect deploy`, or set it in the work pool"
            )
    if value and legacy and value != legacy:
        raise InvalidStoreURIError(
            f"{STORE_ENV}={value!r} and {LEGACY_STORE_ENV}={legacy!r} name different stores: "
            f"unset {LEGACY_STORE_ENV} (its former name) and keep {STORE_ENV}"
        )
    if value:
        return value
    if legacy:
        warnings.warn(
            f"{LEGACY_STORE_ENV} is the former name of {STORE_ENV}; rename it",
            DeprecationWarning,
            stacklevel=2,
        )
        return legacy
    return DEFAULT_STORE


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

    Any other scheme raises :class:`InvalidStoreURIError`. With ``MEND_STORE_TRANSPORT=obstore``
    the same URIs open the evaluated obstore backend instead (:mod:`mend.storage.obstore_store`).
    """
    if os.environ.get(TRANSPORT_ENV, "").strip() == "obstore":
        from .obstore_store import open_obstore  # imported only when opted into

        tuning = {} if s3_config is None else {"require_checksum": s3_config.require_checksum,
                  "checksum_retries": s3_config.checksum_retries, "retry_backoff": s3_config.retry_backoff}
        return open_obstore(uri, **({**tuning, **local_options}))
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
