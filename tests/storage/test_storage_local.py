"""Local-backend specifics: on-disk layout, crash safety, multi-process atomicity."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mend.storage import LocalStore, StorageError

REPO_ROOT = Path(__file__).resolve().parents[2]

# Child processes import mend.storage without running mend/__init__.py (which
# loads torch): the storage code does not need it, and it keeps these tests fast.
CHILD_PREAMBLE = textwrap.dedent(
    f"""
    import sys, types
    package = types.ModuleType("mend")
    package.__path__ = [{str(REPO_ROOT / "mend")!r}]
    sys.modules["mend"] = package
    from mend.storage import LocalStore
    """
)


class Crash(BaseException):
    """Stands in for the process dying at a chosen point."""


def record_of(store: LocalStore, key: str) -> dict[str, object]:
    return json.loads((store.root / ".mend-store" / "sha256" / key).read_text())


# ---------------------------------------------------------------- layout


def test_layout_is_plain_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    store.put_bytes("editors/v1/model.safetensors", b"weights")
    store.put_if_absent("locks/a", b"me")
    store.move("locks/a", "locks/b")
    assert (tmp_path / "s" / "editors" / "v1" / "model.safetensors").read_bytes() == b"weights"
    assert store.path_for("locks/b").read_bytes() == b"me"
    assert store.uri_for("locks/b") == (tmp_path / "s" / "locks" / "b").as_uri()
    assert record_of(store, "editors/v1/model.safetensors") == {
        "sha256": hashlib.sha256(b"weights").hexdigest()
    }
    assert store.list() == ["editors/v1/model.safetensors", "locks/b"]
    assert list((tmp_path / "s" / ".mend-store" / "tmp").iterdir()) == []  # no leftovers
    assert not (tmp_path / "s" / "locks" / "a").exists()


def test_delete_prunes_empty_directories(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    store.put_bytes("a/b/c/d", b"1")
    store.delete("a/b/c/d")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [".mend-store"]
    assert list((tmp_path / "s" / ".mend-store" / "sha256").iterdir()) == []


def test_key_and_directory_conflict(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    store.put_bytes("a", b"file")
    with pytest.raises(StorageError, match="'a/b'"):
        store.put_bytes("a/b", b"x")
    store.put_bytes("dir/x", b"1")
    with pytest.raises(StorageError, match="'dir'"):
        store.put_bytes("dir", b"x")
    with pytest.raises(StorageError, match="'dir'"):
        store.put_if_absent("dir", b"x")
    with pytest.raises(StorageError):
        store.move("a", "dir")
    assert store.list() == ["a", "dir/x"]
    assert store.get_bytes("a") == b"file"


def test_open_requires_existing_root_when_not_creating(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        LocalStore(tmp_path / "missing", create=False)


def test_without_fsync(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s", fsync=False)
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"


def test_put_if_absent_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    store = LocalStore(tmp_path / "s")
    assert store.put_if_absent("lock", b"1") is True
    assert store.put_if_absent("lock", b"2") is False
    assert store.get_bytes("lock") == b"1"


# ---------------------------------------------------------------- simulated crashes


def test_crash_before_object_rename_keeps_old_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "s")
    store.put_bytes("k", b"old")
    real = LocalStore._into_place

    def crash_on_object(self: LocalStore, src: object, dst: Path, key: str, **kw: bool) -> None:
        if dst == store.path_for("k"):
            raise Crash
        real(self, src, dst, key, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(LocalStore, "_into_place", crash_on_object)
    with pytest.raises(Crash):
        store.put_bytes("k", b"new")
    monkeypatch.undo()
    assert "previous" in record_of(store, "k")  # the interrupted write's record
    assert store.get_bytes("k") == b"old"
    store.put_bytes("k", b"newer")
    assert set(record_of(store, "k")) == {"sha256"}
    assert store.get_bytes("k") == b"newer"


def test_crash_after_object_rename_keeps_new_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "s")
    store.put_bytes("k", b"old")
    store.put_bytes("src", b"moved")
    real = LocalStore._write_record
    calls: list[str] = []

    def crash_on_final_record(self: LocalStore, key: str, record: dict[str, object]) -> None:
        calls.append(key)
        if calls.count(key) == 2:  # 1st: transition record, 2nd: final record
            raise Crash
        real(self, key, record)

    monkeypatch.setattr(LocalStore, "_write_record", crash_on_final_record)
    with pytest.raises(Crash):
        store.put_bytes("k", b"new")
    with pytest.raises(Crash):
        store.move("src", "dst")
    monkeypatch.undo()
    assert store.get_bytes("k") == b"new"
    assert store.get_bytes("dst") == b"moved"
    assert not store.exists("src")
    assert store.list() == ["dst", "k"]


def test_killed_writer_never_leaves_a_torn_object(tmp_path: Path) -> None:
    """SIGKILL a process in the middle of writes and moves; whatever survives verifies."""
    root = tmp_path / "s"
    script = CHILD_PREAMBLE + textwrap.dedent(
        f"""
        store = LocalStore({str(root)!r})
        i = 0
        while True:
            payload = bytes([i % 251]) * (1_000_000 + 7919 * (i % 50))
            store.put_bytes("obj", payload)
            store.move("obj", "moved")
            store.put_bytes("obj", payload)
            if i == 0:
                print("ready", flush=True)
            i += 1
        """
    )
    for delay in (0.05, 0.13, 0.29):
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        store = LocalStore(root)
        for key in store.list():
            data = store.get_bytes(key)  # verifies, never a ChecksumMismatchError
            assert data and data == data[:1] * len(data)


def test_put_if_absent_across_processes(tmp_path: Path) -> None:
    root = tmp_path / "s"
    go = tmp_path / "go"
    script = CHILD_PREAMBLE + textwrap.dedent(
        f"""
        import json, os, time
        store = LocalStore({str(root)!r})
        while not os.path.exists({str(go)!r}):
            time.sleep(0.005)
        wins = [k for k in range(40) if store.put_if_absent(f"lease/{{k}}", str(os.getpid()).encode())]
        print(json.dumps(wins))
        """
    )
    LocalStore(root)
    children = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE) for _ in range(4)
    ]
    time.sleep(0.5)
    go.touch()
    results = []
    for child in children:
        out, _ = child.communicate(timeout=60)
        assert child.returncode == 0
        results.append(json.loads(out))
    wins = sorted(k for result in results for k in result)
    assert wins == list(range(40))  # every lease granted exactly once
    store = LocalStore(root)
    assert len(store.list("lease/")) == 40
