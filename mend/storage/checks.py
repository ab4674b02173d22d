"""What every artifact store backend checks: a key's form before anything is touched,
and an object's sha256, recorded on write and verified on read.

Keys. A key is a ``/``-separated relative name such as ``datasets/zsre/train.jsonl``.
Keys are validated, never silently normalised, so a given artifact has exactly
one spelling and the same keys work on the local and the S3 backend:

* non-empty, at most :data:`MAX_KEY_BYTES` bytes of UTF-8;
* no leading or trailing ``/``, no empty segment (``a//b``);
* no ``.`` or ``..`` segment, no backslash, no NUL or other control character;
* the first segment must not be :data:`RESERVED_SEGMENT` (the local backend
  keeps its checksums, locks and temp files there).

A *prefix* (for :meth:`ArtifactStore.list`) is a plain string prefix, as in S3:
``""`` matches everything, ``"runs/"`` matches ``runs/a`` but not ``runs2/a``,
``"runs"`` matches both. Every segment before its last ``/`` must follow the
key rules; the part after it is a partial name (no backslash or control
characters, like everywhere else).

Checksums are hex sha256 digests of an object's bytes (:func:`sha256_bytes`,
:func:`sha256_file`); how a backend records them is its own business (a sidecar file,
object metadata).
"""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO

from .errors import InvalidKeyError

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
