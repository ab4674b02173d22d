"""A local store shared by a group, and one with links planted in it (issue 19, items 9 and 12)."""

from __future__ import annotations

import os
import stat

import pytest

from mend.storage import LocalStore, UntrustedObjectError, open_store


@pytest.fixture
def group_umask():
    old = os.umask(0o002)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_objects_records_and_locks_follow_the_umask(tmp_path, group_umask):
    store = LocalStore(tmp_path / "store")
    store.put_bytes("corrections/pending/a.json", b"{}")
    assert store.put_if_absent("corrections/pending/b.json", b"{}")
    store.get_file("corrections/pending/a.json", tmp_path / "copy.json")
    meta = tmp_path / "store" / ".mend-store"
    for path in (store.path_for("corrections/pending/a.json"), store.path_for("corrections/pending/b.json"),
                 meta / "sha256" / "corrections" / "pending" / "a.json", tmp_path / "copy.json",
                 *(meta / "locks").iterdir()):
        assert _mode(path) == 0o664, path  # mkstemp's 0600 locked the group out


def test_reading_opens_nothing_for_writing(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "store")
    store.put_json("corrections/pending/a.json", {"x": 1})
    reader = LocalStore(tmp_path / "store")
    opened = []
    real_open = os.open

    def spy(path, flags, *args, **kwargs):
        opened.append((str(path), flags))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    assert reader.list("corrections/") == ["corrections/pending/a.json"]
    assert reader.get_json("corrections/pending/a.json") == {"x": 1}
    assert reader.exists("corrections/pending/a.json")
    assert reader.info("corrections/pending/a.json").size > 0
    writes = [(p, f) for p, f in opened if f & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)]
    assert opened and writes == []


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_another_user_of_the_group_reads_and_writes(tmp_path_factory):
    import subprocess
    import sys
    import tempfile

    group = 65534
    top = tempfile.mkdtemp(prefix="mend-shared-")
    os.chmod(top, 0o2775)
    os.chown(top, 0, group)
    old = os.umask(0o002)
    try:
        store = LocalStore(os.path.join(top, "store"))
        store.put_json("corrections/pending/a.json", {"x": 1})
    finally:
        os.umask(old)
    script = (
        "import os; os.setgroups([65534]); os.setgid(65534); os.setuid(65534); os.umask(0o002)\n"
        "from mend.storage.local import LocalStore\n"
        f"s = LocalStore({os.path.join(top, 'store')!r})\n"
        "assert s.list('corrections/') == ['corrections/pending/a.json']\n"
        "assert s.get_json('corrections/pending/a.json') == {'x': 1}\n"
        "s.put_json('corrections/pending/b.json', {'y': 2})\n"
        "print('ok')\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def as_nobody(code: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": root})

    probe = "import os; os.setgroups([65534]); os.setgid(65534); os.setuid(65534)\nimport mend.storage.local"
    if as_nobody(probe).returncode != 0:
        pytest.skip("Python or the checkout is not readable by another user on this machine")
    result = as_nobody(script)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


def test_a_symlinked_folder_inside_the_store_is_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    store = open_store(tmp_path / "store")
    os.symlink(outside, tmp_path / "store" / "corrections")
    with pytest.raises(UntrustedObjectError, match="symbolic link"):
        store.put_bytes("corrections/pending/x.json", b"{}")
    with pytest.raises(UntrustedObjectError):
        assert not store.put_if_absent("corrections/pending/y.json", b"{}")
    (outside / "pending").mkdir()
    (outside / "pending" / "z.json").write_bytes(b"{}")
    with pytest.raises(UntrustedObjectError):
        store.get_bytes("corrections/pending/z.json")
    with pytest.raises(UntrustedObjectError):
        store.list("corrections/")
    assert sorted(p.name for p in outside.rglob("*")) == ["pending", "z.json"]  # nothing written there


def test_a_symlinked_checksum_folder_is_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    store = open_store(tmp_path / "store")
    os.symlink(outside, tmp_path / "store" / ".mend-store" / "sha256" / "runs")
    with pytest.raises(UntrustedObjectError):
        store.put_bytes("runs/a.json", b"{}")
    assert list(outside.iterdir()) == []


def test_a_link_in_place_of_an_object_is_listed_but_never_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    store = open_store(tmp_path / "store")
    store.put_bytes("corrections/pending/a.json", b"{}")
    os.symlink(secret, tmp_path / "store" / "corrections" / "pending" / "b.json")
    os.symlink(tmp_path / "missing", tmp_path / "store" / "corrections" / "pending" / "c.json")
    assert store.list("corrections/pending/") == [f"corrections/pending/{n}.json" for n in "abc"]
    assert store.exists("corrections/pending/c.json")  # occupied, though dangling
    for name in "bc":
        with pytest.raises(UntrustedObjectError, match="symbolic link"):
            store.get_bytes(f"corrections/pending/{name}.json")
    assert store.get_unverified("corrections/pending/b.json") == os.fsencode(secret)
    store.delete("corrections/pending/b.json")
    assert secret.read_text() == "do not read"
