"""The backend-independent artifact store interface.

:class:`ArtifactStore` is an abstract base class: backends implement the byte
and file primitives, and inherit the JSON and directory helpers defined here on
top of them. All methods are safe to call from several threads at once.

Contract shared by every backend (the test suite in ``tests/storage`` runs the
same behaviour tests against each one):

* Keys follow :mod:`mend.storage.checks`; an invalid key raises
  :class:`~mend.storage.errors.InvalidKeyError` before anything is touched.
* Every object's sha256 is recorded when it is written and verified on every
  read (``get_bytes``, ``get_file``, ``get_json``, ``download_dir``). A
  mismatch is retried and then raises
  :class:`~mend.storage.errors.ChecksumMismatchError`.
* Reading a missing key raises :class:`~mend.storage.errors.ArtifactNotFoundError`.
* ``put_*`` overwrite; ``delete`` is idempotent; ``move`` overwrites the
  destination; ``put_if_absent`` is an atomic create that never overwrites.
* ``list`` returns keys sorted by code point (which is also S3's UTF-8 byte
  order), filtered by a plain string prefix.
"""

from __future__ import annotations

import builtins
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .checks import join_key, validate_key, validate_prefix

Bytes = bytes | bytearray | memoryview
"""Accepted types for in-memory payloads."""

_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True)
class ArtifactInfo:
    """What a store knows about one object without downloading it."""

    key: str
    size: int
    sha256: str | None
    """Recorded hex sha256, or ``None`` if the object has none (written by another tool)."""


class ArtifactStore(ABC):
    """A flat namespace of byte objects addressed by ``/``-separated keys."""

    # ------------------------------------------------------------------ identity
    @property
    @abstractmethod
    def uri(self) -> str:
        """URI of the store root; ``open_store(store.uri)`` reopens the same store."""

    @abstractmethod
    def uri_for(self, key: str) -> str:
        """Absolute URI of ``key`` (``file:///...`` or ``s3://bucket/...``); the key need not exist."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    # ------------------------------------------------------------------ primitives
    @abstractmethod
    def put_bytes(self, key: str, data: Bytes) -> None:
        """Store ``data`` under ``key`` atomically, replacing any existing object."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Return the verified contents of ``key``."""

    @abstractmethod
    def put_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        """Upload the file at ``local_path`` to ``key``, replacing any existing object.

        The file must not change while it is uploaded: its sha256 is computed first
        and a concurrent modification surfaces as a checksum error on download.
        """

    @abstractmethod
    def get_file(self, key: str, local_path: str | os.PathLike[str]) -> Path:
        """Download ``key`` to ``local_path`` and return that path.

        Parent directories are created. The file appears atomically and only once
        its checksum has been verified; on failure ``local_path`` is left untouched.
        """

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under exactly ``key``."""

    @abstractmethod
    def info(self, key: str) -> ArtifactInfo:
        """Size and recorded checksum of ``key`` (raises ``ArtifactNotFoundError``)."""

    @abstractmethod
    def list(self, prefix: str = "") -> builtins.list[str]:
        """All keys starting with ``prefix`` (a plain string prefix), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key is not an error."""

    @abstractmethod
    def move(self, src_key: str, dst_key: str) -> None:
        """Rename ``src_key`` to ``dst_key``, replacing any object at ``dst_key``.

        Raises ``ArtifactNotFoundError`` if ``src_key`` is missing. The recorded
        checksum moves with the object. Atomic on the local backend. On S3 it is a
        server-side copy (checked against the source's size and recorded sha256)
        followed by a delete, so a crash in between can leave the object under
        both keys, never under neither: consumers such as a queue must tolerate
        seeing a record in both places.
        """

    @abstractmethod
    def put_if_absent(self, key: str, data: Bytes) -> bool:
        """Atomically create ``key`` with ``data`` unless it exists.

        Returns ``True`` if this call created the object and ``False`` if an object
        was already there (it is left untouched). Exactly one of several concurrent
        callers wins, so this is suitable for locks and leases.
        """

    def get_unverified(self, key: str) -> bytes:
        """``key``'s bytes without checking them against a recorded checksum.

        Only for keeping what could not be verified (a queue's quarantine); everything
        else reads with :meth:`get_bytes`.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot read unverified bytes")

    # ------------------------------------------------------------------ derived helpers
    def put_json(self, key: str, obj: Any) -> None:
        """Store ``obj`` as UTF-8 JSON (sorted keys, strict: NaN/Infinity are rejected)."""
        text = json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
        self.put_bytes(key, (text + "\n").encode("utf-8"))

    def get_json(self, key: str) -> Any:
        """Load the JSON document stored under ``key``."""
        return json.loads(self.get_bytes(key).decode("utf-8"))

    def upload_dir(
        self,
        local_dir: str | os.PathLike[str],
        prefix: str = "",
        *,
        max_workers: int = 4,
    ) -> builtins.list[str]:
        """Upload every file below ``local_dir`` to ``<prefix>/<relative path>``.

        Symlinked files are followed, symlinked directories are not. All keys are
        validated before the first upload. Returns the uploaded keys, sorted. To
        publish a directory atomically, upload it and then write a marker or
        manifest key last; readers look for that key.
        """
        root = Path(local_dir)
        if not root.is_dir():
            raise NotADirectoryError(f"not a directory: {root}")
        if prefix:
            validate_prefix(prefix)
        pairs: builtins.list[tuple[str, Path]] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if not path.is_file():
                    continue
                relative = path.relative_to(root).as_posix()
                pairs.append((validate_key(join_key(prefix, relative)), path))
        self._run_parallel(lambda pair: self.put_file(pair[0], pair[1]), pairs, max_workers)
        return sorted(key for key, _ in pairs)

    def download_dir(
        self,
        prefix: str,
        local_dir: str | os.PathLike[str],
        *,
        max_workers: int = 4,
    ) -> builtins.list[Path]:
        """Download every key under the directory-like ``prefix`` into ``local_dir``.

        ``prefix`` is treated as a directory: ``"ckpt/v1"`` fetches ``ckpt/v1/...``
        but not ``ckpt/v10/...``. ``""`` fetches the whole store. Each file is
        verified. Returns the written paths in key order.
        """
        validate_prefix(prefix)
        dir_prefix = join_key(prefix, "")  # "" or "<prefix>/"
        root = Path(local_dir)
        keys = self.list(dir_prefix)
        targets = [(key, root.joinpath(*key[len(dir_prefix) :].split("/"))) for key in keys]
        self._run_parallel(lambda pair: self.get_file(pair[0], pair[1]), targets, max_workers)
        return [path for _, path in targets]

    @staticmethod
    def _run_parallel(
        func: Callable[[_T], _R], items: Iterable[_T], max_workers: int
    ) -> builtins.list[_R]:
        items = builtins.list(items)
        if max_workers <= 1 or len(items) <= 1:
            return [func(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(max_workers, len(items))) as pool:
            # map() re-raises the first failure once every task has finished.
            return builtins.list(pool.map(func, items))
