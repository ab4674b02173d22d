"""The artifact store's contract: the keys it accepts, the checksums it keeps, and the
interface every backend implements.

:class:`ArtifactStore` is an abstract base class. Its public methods check keys and
prefixes, then call the backend's primitives (``_put_bytes``, ``_read_bytes``, ...) with
keys already valid, and verify what they read against the sha256 the backend recorded;
the JSON and directory helpers are built on those methods. So the contract's checks are
made here once, for every backend. All methods are safe to call from several threads at
once.

Keys. A key is a ``/``-separated relative name such as ``datasets/zsre/train.jsonl``.
Keys are validated, never silently normalised, so a given artifact has exactly one
spelling and the same keys work on every backend:

* non-empty, at most :data:`MAX_KEY_BYTES` bytes of UTF-8;
* no leading or trailing ``/``, no empty segment (``a//b``);
* no ``.`` or ``..`` segment, no backslash, no NUL or other control character;
* the first segment must not be :data:`RESERVED_SEGMENT` (the local backend keeps its
  checksums, locks and temp files there).

A *prefix* (for :meth:`ArtifactStore.list`) is a plain string prefix, as in S3: ``""``
matches everything, ``"runs/"`` matches ``runs/a`` but not ``runs2/a``, ``"runs"``
matches both. Every segment before its last ``/`` must follow the key rules; the part
after it is a partial name (no backslash or control characters, like everywhere else).

Contract shared by every backend (the test suite in ``tests/storage`` runs the
same behaviour tests against each one):

* An invalid key raises :class:`~mend.storage.errors.InvalidKeyError` before anything
  is touched.
* Every object's sha256 is recorded when it is written and verified on every
  read (``get_bytes``, ``get_file``, ``get_json``, ``download_dir``). A mismatch is
  retried and then raises :class:`~mend.storage.errors.ChecksumMismatchError`. The base
  class computes and verifies the digests (:meth:`ArtifactStore._verified`); how a
  backend records them is its own business (a sidecar file, object metadata).
* Reading a missing key raises :class:`~mend.storage.errors.ArtifactNotFoundError`.
* ``put_*`` overwrite; ``delete`` is idempotent; ``move`` overwrites the
  destination; ``put_if_absent`` is an atomic create that never overwrites.
* ``list`` returns keys sorted by code point (which is also S3's UTF-8 byte
  order), filtered by a plain string prefix; stored names no key can spell (a web
  console's ``folder/`` marker, a stray file) are left out.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import json
import os
import random
import secrets
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from .errors import (
    ArtifactNotFoundError,
    ChecksumMismatchError,
    InvalidKeyError,
    UntrustedObjectError,
)

RESERVED_SEGMENT = ".mend-store"
"""First path segment reserved for the local backend's bookkeeping."""

MAX_KEY_BYTES = 900
"""S3 allows 1024 bytes per key; leave room for a store prefix."""


def _check_segments(value: str, segments: list[str]) -> None:
    for segment in segments:
        if segment == "":
            raise InvalidKeyError(value, "empty path segment (leading, trailing or doubled '/')")
        if segment in (".", ".."):
            raise InvalidKeyError(value, f"'{segment}' segments are not allowed")


def _check_chars(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidKeyError(value, "keys must be str")
    if "\\" in value:
        raise InvalidKeyError(value, "backslashes are not allowed; use '/'")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise InvalidKeyError(value, "control characters are not allowed")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKeyError(value, "not encodable as UTF-8 (lone surrogate)") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise InvalidKeyError(value, f"longer than {MAX_KEY_BYTES} bytes")
    return value


def validate_key(key: object) -> str:
    """Return ``key`` unchanged if it is a valid artifact key, else raise :class:`InvalidKeyError`."""
    value = _check_chars(key)
    if value == "":
        raise InvalidKeyError(value, "empty key")
    segments = value.split("/")
    _check_segments(value, segments)
    if segments[0] == RESERVED_SEGMENT:
        raise InvalidKeyError(value, f"'{RESERVED_SEGMENT}/' is reserved")
    return value


def validate_prefix(prefix: object) -> str:
    """Return ``prefix`` unchanged if it is a valid listing prefix, else raise :class:`InvalidKeyError`."""
    value = _check_chars(prefix)
    if value == "":
        return value
    # Every segment before the last '/' is complete and follows the key rules;
    # what follows it is a partial name ("runs" also matches "runs2/x").
    complete = value.split("/")[:-1]
    _check_segments(value, complete)
    if complete and complete[0] == RESERVED_SEGMENT:
        raise InvalidKeyError(value, f"'{RESERVED_SEGMENT}/' is reserved")
    return value


def _is_key(name: str) -> bool:
    try:
        validate_key(name)
    except InvalidKeyError:
        return False
    return True


def join_key(prefix: str, relative: str) -> str:
    """Join a directory-like ``prefix`` (with or without trailing ``/``) and a relative key."""
    prefix = prefix.rstrip("/")
    return f"{prefix}/{relative}" if prefix else relative


CHUNK_SIZE = 1024 * 1024
"""Read size used when hashing or copying files."""


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    """Hex sha256 of an in-memory buffer."""
    return hashlib.sha256(data).hexdigest()


def sha256_stream(stream: BinaryIO) -> str:
    """Hex sha256 of everything left in a binary stream."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: stream.read(CHUNK_SIZE), b""):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's contents, read in chunks."""
    with open(path, "rb") as handle:
        return sha256_stream(handle)


def new_file(directory: str | os.PathLike[str], *, prefix: str = "", suffix: str = "") -> tuple[int, str]:
    """Create a new, empty file in ``directory``; returns a write descriptor and its path.

    Unlike :func:`tempfile.mkstemp` (mode 0600) the file gets 0666 minus the umask, like
    any file a program creates, so the objects and records of a store shared by a group
    stay readable by the group.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    for _ in range(100):
        path = os.path.join(directory, f"{prefix}{secrets.token_hex(8)}{suffix}")
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(directory))


@dataclass(frozen=True)
class Recorded:
    """The sha256 a backend recorded for an object, as one read found it, and any
    ``previous`` digests it still accepts (a write replacing the object records both
    until the new bytes are in place)."""

    sha256: str
    previous: tuple[str, ...] = ()

    @classmethod
    def of(cls, record: Mapping[str, Any] | None) -> Recorded | None:
        """What a backend recorded, from the mapping it keeps it in (a checksum sidecar, an
        object's metadata or attributes: every backend names the digest ``sha256`` and the
        ones still accepted ``previous``); None when it holds no digest."""
        digest = (record or {}).get("sha256")
        return None if digest is None else cls(digest, tuple((record or {}).get("previous", ())))

    def accepts(self, digest: str) -> bool:
        return digest == self.sha256 or digest in self.previous


class RetryRead(Exception):  # noqa: N818 - a signal to retry, not an error the caller sees
    """Raised by a backend's read for a transient failure another attempt may not meet
    (a connection dropped mid-body, an object replaced mid-download); ``final`` is raised
    when no attempt is left."""

    def __init__(self, final: Exception):
        super().__init__(str(final))
        self.final = final


Bytes = bytes | bytearray | memoryview
"""Accepted types for in-memory payloads."""

_T = TypeVar("_T")
_R = TypeVar("_R")

READ_AT_ONCE = 16
"""Documents :meth:`ArtifactStore.get_json_many` has in flight at once from a remote store:
each read is a round trip, an S3 GET, and the round trips overlap."""


@dataclass(frozen=True)
class ArtifactInfo:
    """What a store knows about one object without downloading it."""

    key: str
    size: int
    sha256: str | None
    """Recorded hex sha256, or ``None`` if the object has none (written by another tool)."""


class ArtifactStore(ABC):
    """A flat namespace of byte objects addressed by ``/``-separated keys."""

    # How reads are verified; each backend sets them from its own options.
    _require_checksum: bool = True  # an object without a recorded sha256 is refused
    _read_attempts: int = 3  # reads of an object before a mismatch is raised
    _retry_backoff: float = 0.01  # seconds before the second attempt, doubling after
    _retry_unrecorded: bool = False  # a missing record may appear (written after its object)

    read_at_once: int = READ_AT_ONCE
    """How many reads :meth:`get_json_many` keeps in flight: worth it where a read is a
    round trip; a local backend sets 1, its reads being system calls that threads only
    add their overhead to."""

    # ------------------------------------------------------------------ identity
    @property
    @abstractmethod
    def uri(self) -> str:
        """URI of the store root; ``open_store(store.uri)`` reopens the same store."""

    def uri_for(self, key: str) -> str:
        """Absolute URI of ``key`` (``file:///...`` or ``s3://bucket/...``); the key need not exist."""
        return self._uri_for(validate_key(key))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    # ------------------------------------------------------------------ the contract
    def put_bytes(self, key: str, data: Bytes) -> None:
        """Store ``data`` under ``key`` atomically, replacing any existing object."""
        self._put_bytes(validate_key(key), data, sha256_bytes(data))

    def get_bytes(self, key: str) -> bytes:
        """Return the verified contents of ``key``."""
        key = validate_key(key)

        def attempt() -> tuple[bytes, Recorded | None, str]:
            data, recorded = self._read_bytes(key)
            return data, recorded, sha256_bytes(data)

        return self._verified(key, attempt)

    def put_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        """Upload the file at ``local_path`` to ``key``, replacing any existing object.

        The file must not change while it is uploaded: its sha256 is computed first
        and a concurrent modification surfaces as a checksum error on download.
        """
        self._put_file(validate_key(key), local_path)

    def get_file(self, key: str, local_path: str | os.PathLike[str]) -> Path:
        """Download ``key`` to ``local_path`` and return that path.

        Parent directories are created. The file appears atomically and only once
        its checksum has been verified; on failure ``local_path`` is left untouched.
        """
        key = validate_key(key)
        dest = Path(local_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged: builtins.list[str] = []

        def attempt() -> tuple[str, Recorded | None, str]:
            fd, tmp = new_file(dest.parent, prefix=f".{dest.name}.", suffix=".part")
            os.close(fd)
            staged.append(tmp)
            return (tmp, *self._download(key, tmp))

        try:
            os.replace(self._verified(key, attempt), dest)
        finally:
            for name in staged:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)
        return dest

    def exists(self, key: str) -> bool:
        """Whether an object is stored under exactly ``key``."""
        return self._exists(validate_key(key))

    def info(self, key: str) -> ArtifactInfo:
        """Size and recorded checksum of ``key`` (raises ``ArtifactNotFoundError``)."""
        return self._info(validate_key(key))

    def list(self, prefix: str = "") -> builtins.list[str]:
        """All keys starting with ``prefix`` (a plain string prefix), sorted."""
        validate_prefix(prefix)
        return sorted(name for name in self._names(prefix) if name.startswith(prefix) and _is_key(name))

    def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key is not an error."""
        self._delete(validate_key(key))

    def move(self, src_key: str, dst_key: str) -> None:
        """Rename ``src_key`` to ``dst_key``, replacing any object at ``dst_key``.

        Raises ``ArtifactNotFoundError`` if ``src_key`` is missing. The recorded
        checksum moves with the object. Atomic on the local backend. On S3 it is a
        server-side copy (checked against the source's size and recorded sha256)
        followed by a delete, so a crash in between can leave the object under
        both keys, never under neither: consumers such as a queue must tolerate
        seeing a record in both places.
        """
        self._move(validate_key(src_key), validate_key(dst_key))

    def put_if_absent(self, key: str, data: Bytes) -> bool:
        """Atomically create ``key`` with ``data`` unless it exists.

        Returns ``True`` if this call created the object and ``False`` if an object
        was already there (it is left untouched). Exactly one of several concurrent
        callers wins, so this is suitable for locks and leases.
        """
        return self._put_if_absent(validate_key(key), data, sha256_bytes(data))

    def get_unverified(self, key: str) -> bytes:
        """``key``'s bytes without checking them against a recorded checksum.

        Only for keeping what could not be verified (a queue's quarantine); everything
        else reads with :meth:`get_bytes`.
        """
        return self._get_unverified(validate_key(key))

    def _verified(self, key: str, attempt: Callable[[], tuple[_T, Recorded | None, str]]) -> _T:
        """What ``attempt`` read, once its digest matches what the backend recorded.

        ``attempt`` returns the payload, the record as it found it (None: none) and the
        payload's sha256. A mismatch, or a :class:`RetryRead`, is tried again after a
        backoff, up to ``_read_attempts`` reads: a reader can meet a write in between.
        """
        recorded: Recorded | None = None
        actual, retry = "", None
        for number in range(self._read_attempts):
            try:
                payload, recorded, actual = attempt()
            except RetryRead as exc:
                retry = exc
            else:
                retry = None
                if recorded is None:
                    if not self._require_checksum:
                        return payload
                    if not self._retry_unrecorded:  # no read will find one
                        raise ChecksumMismatchError(key, None, actual, number + 1)
                elif recorded.accepts(actual):
                    return payload
            if number + 1 < self._read_attempts:
                time.sleep(self._retry_backoff * (2**number) * (0.5 + random.random()))
        if retry is not None:
            raise retry.final from retry.__cause__
        raise ChecksumMismatchError(key, recorded.sha256 if recorded else None, actual, self._read_attempts)

    # ------------------------------------------------------------------ a backend's primitives
    # Each receives keys (and a prefix) already checked by the method above it.
    @abstractmethod
    def _uri_for(self, key: str) -> str: ...

    @abstractmethod
    def _put_bytes(self, key: str, data: Bytes, sha256: str) -> None:
        """Store ``data`` and record ``sha256``, its digest."""

    @abstractmethod
    def _read_bytes(self, key: str) -> tuple[bytes, Recorded | None]:
        """``key``'s bytes and its record, read together (verified by the caller)."""

    @abstractmethod
    def _put_file(self, key: str, local_path: str | os.PathLike[str]) -> None: ...

    @abstractmethod
    def _download(self, key: str, path: str) -> tuple[Recorded | None, str]:
        """Write ``key``'s bytes over the file ``path``; return its record and the sha256
        of what was written (the caller verifies, and moves the file into place)."""

    @abstractmethod
    def _exists(self, key: str) -> bool: ...

    @abstractmethod
    def _info(self, key: str) -> ArtifactInfo: ...

    @abstractmethod
    def _names(self, prefix: str) -> Iterable[str]:
        """Stored names that may start with ``prefix`` (a superset is fine: :meth:`list`
        keeps those that start with it and are valid keys, and sorts them)."""

    @abstractmethod
    def _delete(self, key: str) -> None: ...

    @abstractmethod
    def _move(self, src_key: str, dst_key: str) -> None: ...

    @abstractmethod
    def _put_if_absent(self, key: str, data: Bytes, sha256: str) -> bool: ...

    def _get_unverified(self, key: str) -> bytes:
        raise NotImplementedError(f"{type(self).__name__} cannot read unverified bytes")

    # ------------------------------------------------------------------ derived helpers
    def put_json(self, key: str, obj: Any) -> None:
        """Store ``obj`` as UTF-8 JSON (sorted keys, strict: NaN/Infinity are rejected)."""
        text = json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
        self.put_bytes(key, (text + "\n").encode("utf-8"))

    def get_json(self, key: str) -> Any:
        """Load the JSON document stored under ``key``."""
        return json.loads(self.get_bytes(key).decode("utf-8"))

    def get_json_many(self, keys: Iterable[str]) -> Iterator[tuple[str, Any]]:
        """``(key, document)`` for each of ``keys``, in order, :attr:`read_at_once` read
        concurrently. A key whose document cannot be had comes back with the error in its
        place, so one bad object hides none of the others: missing
        (:class:`ArtifactNotFoundError`), failing verification
        (:class:`ChecksumMismatchError`, :class:`UntrustedObjectError`) or not JSON
        (``ValueError``, ``RecursionError``). Anything else (an unreachable store, an
        invalid key) is raised."""

        def read(key: str) -> tuple[str, Any]:
            key = validate_key(key)
            try:
                return key, self.get_json(key)
            except (ArtifactNotFoundError, ChecksumMismatchError, UntrustedObjectError, ValueError,
                    RecursionError) as error:
                return key, error

        return _overlapped(read, keys, self.read_at_once)

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
        builtins.list(_overlapped(lambda pair: self.put_file(pair[0], pair[1]), pairs, max_workers))
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
        builtins.list(_overlapped(lambda pair: self.get_file(pair[0], pair[1]), targets, max_workers))
        return [path for _, path in targets]


def _overlapped(func: Callable[[_T], _R], items: Iterable[_T], at_once: int) -> Iterator[_R]:
    """``func`` of each item, in order, up to ``at_once`` running at a time in threads:
    for round trips to a store (an S3 GET each), which overlap. The window of started
    calls is bounded, so any number of items is never all in memory; a failure is
    raised where its item comes, once the calls already started have finished."""
    if at_once <= 1:
        yield from map(func, items)
        return
    with ThreadPoolExecutor(max_workers=at_once) as pool:
        window: deque = deque()
        for item in items:
            window.append(pool.submit(func, item))
            if len(window) >= 4 * at_once:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
