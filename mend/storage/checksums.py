"""What every artifact store backend records and verifies: an object's sha256.

Checksums are hex sha256 digests of an object's bytes (:func:`sha256_bytes`,
:func:`sha256_file`), recorded when it is written and verified on every read; how a
backend records them is its own business (a sidecar file, object metadata).
"""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO

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
