"""``ArtifactStore.get_json_many``: a remote store's reads overlap, a local store's stay in
the calling thread; results come in order from a bounded window, and a failure that says
nothing about one document is raised."""

import threading

import pytest

from mend.storage import LocalStore, StorageError
from tests.support.in_flight import RoundTripStore


def _documents(store, n: int) -> list[str]:
    for i in range(n):
        store.put_json(f"docs/{i:03d}.json", {"i": i})
    return store.list("docs/")


def test_a_remote_stores_reads_overlap_and_come_back_in_order(tmp_path):
    store = RoundTripStore(tmp_path / "store")
    keys = _documents(store, 40)
    assert list(store.get_json_many(keys)) == [(k, {"i": i}) for i, k in enumerate(keys)]
    assert 1 < store.most <= store.read_at_once


def test_a_local_store_reads_one_at_a_time_in_the_calling_thread(tmp_path):
    threads = set()

    class Watched(LocalStore):
        def _read_bytes(self, key):
            threads.add(threading.get_ident())
            return super()._read_bytes(key)

    store = Watched(tmp_path / "store")
    keys = _documents(store, 10)
    assert [doc for _, doc in store.get_json_many(keys)] == [{"i": i} for i in range(10)]
    assert threads == {threading.get_ident()}


def test_the_window_of_reads_started_ahead_is_bounded(tmp_path):
    store = RoundTripStore(tmp_path / "store", seconds=0)
    keys = _documents(store, 200)
    pulled = []

    def lazily():
        for key in keys:
            pulled.append(key)
            yield key

    read = store.get_json_many(lazily())
    assert [next(read)[1] for _ in range(3)] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert len(pulled) <= 3 + 4 * store.read_at_once
    read.close()


def test_a_failure_that_says_nothing_about_the_document_is_raised_where_it_comes(tmp_path):
    class Unreachable(RoundTripStore):
        def _read_bytes(self, key):
            if key.endswith("007.json"):
                raise StorageError("connection reset")
            return super()._read_bytes(key)

    store = Unreachable(tmp_path / "store", seconds=0)
    read = store.get_json_many(_documents(store, 20))
    assert [next(read)[1]["i"] for _ in range(7)] == list(range(7))
    with pytest.raises(StorageError, match="connection reset"):
        next(read)
