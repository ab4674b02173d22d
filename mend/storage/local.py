"""Artifact store over a local (or locally mounted) directory.

Layout under the store root::

    <root>/<key>                         the object, byte for byte (usable in place)
    <root>/.mend-store/sha256/<key>      checksum record (JSON) for <key>
    <root>/.mend-store/locks/NN.lock     256 striped flock(2) lock files
    <root>/.mend-store/tmp/              staging area for atomic writes

Checksums live in a mirror tree of per-key JSON *sidecar* records rather than
one shared checksums file, so writers of different keys never contend on the
same file and a record is replaced atomically together with its object.

Crash safety. Every write is staged in ``.mend-store/tmp`` (same filesystem),
fsynced, and renamed into place with :func:`os.replace`, so an object is either
the old or the new version, never a torn one. An object and its record cannot
be renamed in one step, so a write first publishes a record that accepts both
the old and the new digest (``{"sha256": new, "previous": [old]}``), then
renames the object, then drops ``previous``. Whatever point a crash interrupts,
the object on disk matches its record; only real corruption fails verification.

Concurrency. Writers of a key take an exclusive ``flock`` on the key's lock
stripe, readers a shared one, so a reader never pairs a new object with an old
record. ``flock`` works between threads and processes on one machine, which is
what this backend supports (not several hosts sharing an NFS mount). Temp files
left by a crashed process stay in ``.mend-store/tmp`` and are safe to delete.

Limitation: as on any filesystem, ``a`` and ``a/b`` cannot both be keys;
writing one while the other exists raises :class:`StorageError`.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .base import (
    CHUNK_SIZE,
    RESERVED_SEGMENT,
    ArtifactInfo,
    ArtifactStore,
    Bytes,
    Recorded,
    new_file,
    validate_key,
)
from .errors import (
    ArtifactNotFoundError,
    StorageError,
    UntrustedObjectError,
)

_LOCK_STRIPES = 256
_REPLACE_ATTEMPTS = 8


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore(ArtifactStore):
    """An :class:`ArtifactStore` over a directory. See the module docstring for the layout."""

    read_at_once = 1  # a read is a few system calls: reading in threads only slows it

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        create: bool = True,
        fsync: bool = True,
        require_checksum: bool = True,
        checksum_retries: int = 2,
    ) -> None:
        """Open (and by default create) the store rooted at ``root``.

        :param create: create ``root`` if missing; otherwise a missing root raises
            :class:`StorageError`.
        :param fsync: fsync files and directories so a committed write survives a
            power loss, not only a process crash. Turn off only for scratch stores.
        :param require_checksum: if ``False``, objects without a checksum record
            (files copied into the directory by hand) are returned unverified
            instead of raising :class:`ChecksumMismatchError`.
        :param checksum_retries: extra read attempts after a checksum mismatch.
        """
        self._root = Path(root).expanduser().absolute()
        if create:
            self._root.mkdir(parents=True, exist_ok=True)
        elif not self._root.is_dir():
            raise StorageError(f"local store root does not exist: {self._root}")
        self._meta = self._root / RESERVED_SEGMENT
        self._sums = self._meta / "sha256"
        self._locks = self._meta / "locks"
        self._tmp = self._meta / "tmp"
        for directory in (self._sums, self._locks, self._tmp):
            directory.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._require_checksum = require_checksum
        self._read_attempts = max(0, checksum_retries) + 1

    # ------------------------------------------------------------------ identity
    @property
    def root(self) -> Path:
        """Absolute path of the store root."""
        return self._root

    @property
    def uri(self) -> str:
        return self._root.as_uri()

    def _uri_for(self, key: str) -> str:
        return self._path(key).as_uri()

    def path_for(self, key: str) -> Path:
        """Filesystem path where ``key``'s bytes live (read-only use: writes must go through the store).

        Raises :class:`UntrustedObjectError` if a folder on the way is a symbolic link:
        the store never follows links, which could lead out of its root.
        """
        return self._path(validate_key(key))

    def _path(self, key: str) -> Path:
        path = self._root.joinpath(*key.split("/"))
        _refuse_links(path.parent, self._root, key)
        return path

    def _object_path(self, key: str) -> Path:
        """``key``'s path for reading its bytes: the object itself must not be a link either."""
        path = self._path(key)
        if path.is_symlink():
            raise UntrustedObjectError(key, f"{path} is a symbolic link (to {os.readlink(path)!r})")
        return path

    # ------------------------------------------------------------------ writes
    def _put_bytes(self, key: str, data: Bytes, sha256: str) -> None:
        tmp, _ = self._stage(lambda out: _write(data, out))
        self._commit(key, tmp, sha256)

    def _put_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        with open(local_path, "rb") as src:
            tmp, digest = self._stage(lambda out: _copy_and_hash(src, out))
        self._commit(key, tmp, digest)

    def _put_if_absent(self, key: str, data: Bytes, sha256: str) -> bool:
        target = self._path(key)
        tmp, _ = self._stage(lambda out: _write(data, out))
        try:
            with self._locked([key]):
                if target.is_dir() and not target.is_symlink():
                    raise self._conflict(key, IsADirectoryError(errno.EISDIR, "is a directory"))
                if os.path.lexists(target):
                    return False
                # The object is absent, so any record left here is an orphan.
                self._write_record(key, {"sha256": sha256})
                try:
                    # link(2) never replaces an existing name, and the object
                    # appears with its full contents in one step.
                    self._into_place(tmp, target, key, link=True)
                except FileExistsError:  # created by something bypassing the store
                    self._remove_record(key)
                    return False
                if self._fsync:
                    _fsync_dir(target.parent)
                return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _delete(self, key: str) -> None:
        target = self._path(key)
        with self._locked([key]):
            try:
                os.unlink(target)
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                pass  # not a key (missing, or only a "directory" of other keys)
            else:
                if self._fsync:
                    _fsync_dir(target.parent)
            self._remove_record(key)
            self._prune(target.parent, self._root)

    def _move(self, src_key: str, dst_key: str) -> None:
        src, dst = self._object_path(src_key), self._path(dst_key)
        with self._locked([src_key, dst_key]):
            if not src.is_file():
                raise ArtifactNotFoundError(src_key, self._uri_for(src_key))
            if src_key == dst_key:
                return
            record = self._read_record(src_key)
            if record is None:
                # An unverifiable object stays unverifiable under its new name.
                self._remove_record(dst_key)
            else:
                self._write_record(dst_key, self._transition(dst_key, record["sha256"], record))
            self._into_place(src, dst, dst_key)
            if self._fsync:
                _fsync_dir(dst.parent)
                if src.parent != dst.parent:
                    _fsync_dir(src.parent)
            if record is not None:
                self._write_record(dst_key, {"sha256": record["sha256"]})
            self._remove_record(src_key)
            self._prune(src.parent, self._root)

    # ------------------------------------------------------------------ reads
    def _read_bytes(self, key: str) -> tuple[bytes, Recorded | None]:
        target = self._object_path(key)
        with self._locked([key], shared=True):  # never a new object with an old record
            record = self._read_record(key)
            try:
                data = target.read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise ArtifactNotFoundError(key, self._uri_for(key)) from None
        return data, Recorded.of(record)

    def _download(self, key: str, path: str) -> tuple[Recorded | None, str]:
        source = self._object_path(key)
        with open(path, "wb") as out:
            with self._locked([key], shared=True):
                record = self._read_record(key)
                try:
                    src = open(source, "rb")  # noqa: SIM115 - closed below
                except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                    raise ArtifactNotFoundError(key, self._uri_for(key)) from None
                with src:
                    actual = _copy_and_hash(src, out)
            if self._fsync:
                out.flush()
                os.fsync(out.fileno())
        return Recorded.of(record), actual

    def _exists(self, key: str) -> bool:
        """Whether something occupies ``key``: an object, or a link the store will not read."""
        path = self._path(key)
        return path.is_symlink() or path.is_file()

    def _get_unverified(self, key: str) -> bytes:
        """``key``'s bytes without checking them against a checksum record (for quarantine).

        A symbolic link is never followed: its bytes are the link's target path.
        """
        path = self._path(key)
        if path.is_symlink():
            return os.fsencode(os.readlink(path))
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ArtifactNotFoundError(key, self._uri_for(key)) from None

    def _info(self, key: str) -> ArtifactInfo:
        target = self._object_path(key)
        with self._locked([key], shared=True):
            try:
                if not target.is_file():
                    raise FileNotFoundError(target)
                size = target.stat().st_size
            except (FileNotFoundError, NotADirectoryError):
                raise ArtifactNotFoundError(key, self._uri_for(key)) from None
            record = self._read_record(key)
        return ArtifactInfo(key=key, size=size, sha256=record["sha256"] if record else None)

    def _names(self, prefix: str) -> Iterator[str]:
        # Walk only the deepest directory fully named by the prefix.
        directory, _, _ = prefix.rpartition("/")
        start = self._root.joinpath(*directory.split("/")) if directory else self._root
        _refuse_links(start, self._root, prefix)
        for dirpath, dirnames, filenames in os.walk(start):  # never descends into links
            here = Path(dirpath)
            if here == self._root:
                dirnames[:] = [d for d in dirnames if d != RESERVED_SEGMENT]
            relative_dir = here.relative_to(self._root).as_posix()
            # A link occupies its key even though the store will not read through it.
            links = [d for d in dirnames if (here / d).is_symlink()]
            for name in [*filenames, *links]:
                path = here / name
                if path.is_symlink() or path.is_file():
                    yield name if relative_dir == "." else f"{relative_dir}/{name}"

    # ------------------------------------------------------------------ internals
    def _stage(self, fill: Callable[[BinaryIO], str | None]) -> tuple[str, str | None]:
        """Create a temp file, let ``fill`` write it; return its path and what ``fill`` returned."""
        fd, tmp_name = new_file(self._tmp, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                digest = fill(out)
                if self._fsync:
                    out.flush()
                    os.fsync(out.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        return tmp_name, digest

    def _commit(self, key: str, tmp: str, digest: str) -> None:
        """Atomically replace ``key`` with the staged file ``tmp`` whose sha256 is ``digest``."""
        target = self._path(key)
        try:
            with self._locked([key]):
                self._write_record(key, self._transition(key, digest, None))
                self._into_place(tmp, target, key)
                if self._fsync:
                    _fsync_dir(target.parent)
                self._write_record(key, {"sha256": digest})
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _transition(self, key: str, digest: str, moved: dict[str, Any] | None) -> dict[str, Any]:
        """Record valid both before and after ``key``'s object becomes ``digest``."""
        previous: set[str] = set()
        if self._path(key).is_file():
            old = self._read_record(key)
            if old is not None:
                previous.update([old["sha256"], *old.get("previous", [])])
        if moved is not None:
            previous.update(moved.get("previous", []))
        previous.discard(digest)
        record: dict[str, Any] = {"sha256": digest}
        if previous:
            record["previous"] = sorted(previous)
        return record

    def _record_path(self, key: str) -> Path:
        path = self._sums.joinpath(*key.split("/"))
        _refuse_links(path.parent, self._sums, key)
        return path

    def _read_record(self, key: str) -> dict[str, Any] | None:
        try:
            record = json.loads(self._record_path(key).read_bytes())
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except ValueError:  # unreadable record: treat as missing (fails verification)
            return None
        if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
            return None
        return record

    def _write_record(self, key: str, record: dict[str, Any]) -> None:
        data = json.dumps(record, sort_keys=True).encode("utf-8")
        tmp, _ = self._stage(lambda out: _write(data, out))
        path = self._record_path(key)
        try:
            self._into_place(tmp, path, key)
            if self._fsync:
                _fsync_dir(path.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _remove_record(self, key: str) -> None:
        path = self._record_path(key)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
            os.unlink(path)
        self._prune(path.parent, self._sums)

    def _into_place(self, src: str | Path, dst: Path, key: str, *, link: bool = False) -> None:
        """Rename (or hard-link) ``src`` to ``dst``, creating parent directories.

        Retries when a concurrent :meth:`_prune` removes the freshly created parent.
        """
        base = self._sums if self._sums in dst.parents else self._root
        for _ in range(_REPLACE_ATTEMPTS):
            _refuse_links(dst.parent, base, key)
            try:
                dst.parent.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError) as exc:
                raise self._conflict(key, exc) from exc
            _refuse_links(dst.parent, base, key)  # mkdir follows links: look again
            try:
                if link:
                    try:
                        os.link(src, dst)
                    except OSError as exc:
                        if exc.errno not in (
                            errno.EPERM,
                            errno.EOPNOTSUPP,
                            errno.EXDEV,
                            errno.EMLINK,
                        ):
                            raise
                        # No hard links here (some FUSE/SMB mounts). The key's lock
                        # is held and absence was checked, so a rename is safe.
                        os.replace(src, dst)
                else:
                    os.replace(src, dst)
                return
            except IsADirectoryError as exc:
                raise self._conflict(key, exc) from exc
            except FileNotFoundError:
                if not os.path.exists(src):
                    raise
                continue  # parent directory pruned under us; recreate it
        raise StorageError(f"could not place {dst}: its directory kept disappearing")

    def _conflict(self, key: str, exc: OSError) -> StorageError:
        return StorageError(
            f"cannot write key {key!r} in {self.uri}: in a local store a key cannot also be "
            f"the 'directory' of other keys, e.g. 'a' and 'a/b' ({exc.strerror or exc})"
        )

    @staticmethod
    def _prune(directory: Path, stop: Path) -> None:
        """Remove empty directories from ``directory`` up to (excluding) ``stop``."""
        while directory != stop and stop in directory.parents:
            try:
                os.rmdir(directory)
            except OSError:
                return
            directory = directory.parent

    @contextlib.contextmanager
    def _locked(self, keys: builtins.list[str], *, shared: bool = False) -> Iterator[None]:
        """Hold the flock stripes of ``keys`` (acquired in order, so no deadlocks)."""
        stripes = sorted({hashlib.sha256(k.encode()).digest()[0] % _LOCK_STRIPES for k in keys})
        fds: builtins.list[int] = []
        try:
            for stripe in stripes:
                fd = self._lock_file(stripe, create=not shared)
                if fd is None:
                    continue
                fds.append(fd)
                fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            for fd in reversed(fds):
                os.close(fd)  # closing the descriptor releases its flock


    def _lock_file(self, stripe: int, *, create: bool) -> int | None:
        """A read-only descriptor on a lock stripe (flock needs no write access), so a user
        who may only read a shared store can still take shared locks.

        A reader that may not create a missing stripe goes without it: no writer has
        used that stripe yet, and a read racing the first writer is caught by the
        checksum check and retried.
        """
        path = self._locks / f"{stripe:02x}.lock"
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            return os.open(path, flags)
        except FileNotFoundError:
            pass
        try:
            return os.open(path, flags | os.O_CREAT, 0o666)  # 0o666 minus the umask
        except PermissionError:
            if create:
                raise
            return None


def _refuse_links(directory: Path, base: Path, key: str) -> None:
    """Raise :class:`UntrustedObjectError` if a folder from ``base`` down to ``directory``
    is a symbolic link (``directory`` need not exist)."""
    if directory == base:
        return
    try:
        relative = directory.relative_to(base)
    except ValueError:
        raise UntrustedObjectError(key, f"{directory} is outside the store") from None
    path = base
    for part in relative.parts:
        path = path / part
        if path.is_symlink():
            raise UntrustedObjectError(
                key, f"{path} is a symbolic link (to {os.readlink(path)!r}); the store does not follow links"
            )
        if not path.exists():
            return


def _write(data: Bytes, out: BinaryIO) -> None:
    out.write(data)


def _copy_and_hash(src: BinaryIO, out: BinaryIO) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: src.read(CHUNK_SIZE), b""):
        digest.update(chunk)
        out.write(chunk)
    return digest.hexdigest()
