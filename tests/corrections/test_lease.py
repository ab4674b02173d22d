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


def test_a_takeover_left_half_done_by_a_killed_run_does_not_block_forever(tmp_path):
    store = open_store(tmp_path)
    Lease(store, "locks/apply.json", ttl_s=0.3).acquire()
    time.sleep(0.4)  # the holder died; a run starts taking over and is killed mid-way
    dying = Lease(store, "locks/apply.json", ttl_s=0.3)
    store.put_if_absent("locks/apply.json.takeover-1", dying._payload(1))
    time.sleep(0.4)
    with pytest.raises(LeaseHeldError, match="taken over"):  # the dead marker is cleared...
        Lease(store, "locks/apply.json", ttl_s=5).acquire()
    lease = Lease(store, "locks/apply.json", ttl_s=5).acquire()  # ...so the next try wins
    assert lease.held() and not store.exists("locks/apply.json.takeover-1")
