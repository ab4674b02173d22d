import time

import pytest

from mend.corrections import Lease, LeaseHeldError
from mend.storage import open_store


def test_second_holder_is_refused_until_the_lease_expires(tmp_path):
    store = open_store(tmp_path)
    first = Lease(store, "locks/apply.json", ttl_s=0.5).acquire()
    with pytest.raises(LeaseHeldError, match="held by"):
        Lease(store, "locks/apply.json", ttl_s=0.5).acquire()
    time.sleep(0.6)  # the first holder "crashed": its lease expires
    second = Lease(store, "locks/apply.json", ttl_s=5).acquire()
    assert second.held() and not first.held()
    with pytest.raises(LeaseHeldError, match="lost the lease"):
        first.renew()
    second.release()
    assert not store.exists("locks/apply.json")


def test_context_manager_releases(tmp_path):
    store = open_store(tmp_path)
    with Lease(store, "locks/x.json") as lease:
        assert lease.held()
    assert Lease(store, "locks/x.json").acquire().held()
