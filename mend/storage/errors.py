"""Exceptions raised by artifact stores.

Every store raises the same exception types regardless of backend, so callers
(Prefect flows, the corrections queue) never need to catch ``botocore`` or
``OSError`` subclasses for the expected failure modes. All of them survive a
pickle round trip with their attributes (Prefect ships task exceptions between
processes).
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error raised by :mod:`mend.storage`."""


class InvalidKeyError(StorageError, ValueError):
    """A key or prefix is not a canonical ``/``-separated relative name."""

    def __init__(self, key: object, reason: str) -> None:
        super().__init__(f"invalid artifact key {key!r}: {reason}")
        self.key = key
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[object, str]]:
        return (type(self), (self.key, self.reason))


class InvalidStoreURIError(StorageError, ValueError):
    """``open_store`` was given a URI it cannot interpret."""


class ArtifactNotFoundError(StorageError, KeyError):
    """The requested key does not exist in the store.

    Subclasses :class:`KeyError` so ``except KeyError`` also works, but
    ``str()`` gives a readable message rather than ``KeyError``'s repr.
    """

    def __init__(self, key: str, location: str | None = None) -> None:
        super().__init__(key)
        self.key = key
        self.location = location

    def __reduce__(self) -> tuple[type, tuple[str, str | None]]:
        return (type(self), (self.key, self.location))

    def __str__(self) -> str:
        where = f" ({self.location})" if self.location else ""
        return f"artifact not found: {self.key!r}{where}"


class BucketNotFoundError(StorageError):
    """The S3 bucket behind an ``s3://`` store does not exist."""

    def __init__(self, bucket: str) -> None:
        super().__init__(f"S3 bucket does not exist: {bucket!r}")
        self.bucket = bucket

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return (type(self), (self.bucket,))


class ChecksumMismatchError(StorageError):
    """Downloaded content does not match the checksum recorded when it was stored.

    Raised only after the download was retried. ``expected``/``actual`` are hex
    sha256 digests. ``expected`` is ``None`` when the object has no recorded
    checksum (written by another tool) and the store requires one. ``detail``
    describes failures where no sha256 could be computed, e.g. the S3 client's
    own transfer checksum kept failing.
    """

    def __init__(
        self,
        key: str,
        expected: str | None,
        actual: str | None,
        attempts: int = 1,
        detail: str | None = None,
    ) -> None:
        if detail is None:
            if expected is None:
                detail = "no sha256 checksum is recorded for it"
            else:
                detail = f"expected sha256 {expected}, got {actual}"
        super().__init__(
            f"checksum mismatch for artifact {key!r} after {attempts} attempt(s): {detail}"
        )
        self.key = key
        self.expected = expected
        self.actual = actual
        self.attempts = attempts
        self.detail = detail

    def __reduce__(self) -> tuple[type, tuple[str, str | None, str | None, int, str]]:
        return (type(self), (self.key, self.expected, self.actual, self.attempts, self.detail))


class UntrustedObjectError(StorageError):
    """Something occupies a key that the store will not read or write through.

    A local store never follows symbolic links (they could lead out of its root): a
    link in place of an object, or in place of a folder on the way to one, raises this.
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"untrusted artifact {key!r}: {reason}")
        self.key = key
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.key, self.reason))
