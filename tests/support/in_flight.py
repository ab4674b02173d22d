"""A local store whose reads are round trips, as a remote store's: it counts how many
run at once."""

import threading
import time

from mend.storage import LocalStore


class RoundTripStore(LocalStore):
    """Every read waits ``seconds`` first; reads several at once, as a remote store does.
    ``most`` is the largest number of reads that were in flight together."""

    read_at_once = 8

    def __init__(self, root, seconds: float = 0.005):
        super().__init__(root)
        self.seconds = seconds
        self.now = self.most = 0
        self._lock = threading.Lock()

    def _read_bytes(self, key):
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(self.seconds)
            return super()._read_bytes(key)
        finally:
            with self._lock:
                self.now -= 1
