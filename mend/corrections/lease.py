"""A lease on the artifact store: at most one apply run works on a queue at a time.

The lease is a JSON object ``{"owner", "expires_at", "generation"}`` created with the
store's atomic ``put_if_absent``. A crashed holder's lease expires; taking it over goes
through another atomic create keyed by the expired generation, so of several runs that
notice the expiry exactly one wins. The lease is an optimisation against wasted work:
correctness does not depend on it, because versions are published with
``put_if_absent`` too (two runs can never both publish the same version).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from mend.storage import ArtifactNotFoundError, ArtifactStore


class LeaseHeldError(RuntimeError):
    """Another run holds the lease."""


@dataclass
class Lease:
    store: ArtifactStore
    key: str
    ttl_s: float = 600.0
    owner: str = ""

    def __post_init__(self):
        self.owner = self.owner or uuid.uuid4().hex
        self.generation = 0

    def _payload(self, generation: int) -> bytes:
        return json.dumps(
            {"owner": self.owner, "expires_at": time.time() + self.ttl_s, "generation": generation}
        ).encode()

    def acquire(self) -> Lease:
        if self.store.put_if_absent(self.key, self._payload(1)):
            self.generation = 1
            return self
        try:
            held = json.loads(self.store.get_bytes(self.key))
        except ArtifactNotFoundError:  # released meanwhile
            return self.acquire()
        if held["expires_at"] > time.time():
            remaining = held["expires_at"] - time.time()
            raise LeaseHeldError(f"{self.key} is held by {held['owner']} for another {remaining:.0f}s")
        takeover = f"{self.key}.takeover-{held['generation']}"
        if not self.store.put_if_absent(takeover, self._payload(held["generation"])):
            self._clear_stale(takeover)
            raise LeaseHeldError(f"{self.key} expired and was just taken over by another run")
        self.generation = held["generation"] + 1
        self.store.put_bytes(self.key, self._payload(self.generation))
        self.store.delete(takeover)
        return self

    def _clear_stale(self, takeover: str) -> None:
        """Remove a takeover marker whose writer died before finishing the takeover.

        Without this, a run killed between creating the marker and deleting it would
        block the queue forever. Deleting a marker another run has just renewed is
        harmless: versions are published with put_if_absent regardless of the lease.
        """
        try:
            marker = json.loads(self.store.get_bytes(takeover))
        except ArtifactNotFoundError:
            return
        except ValueError:  # not ours to read (an older format): treat as stale
            marker = {}
        if not isinstance(marker, dict) or marker.get("expires_at", 0) <= time.time():
            self.store.delete(takeover)

    def held(self) -> bool:
        try:
            current = json.loads(self.store.get_bytes(self.key))
        except ArtifactNotFoundError:
            return False
        return current["owner"] == self.owner and current["expires_at"] > time.time()

    def renew(self) -> None:
        if not self.held():
            raise LeaseHeldError(f"lost the lease {self.key}")
        self.store.put_bytes(self.key, self._payload(self.generation))

    def release(self) -> None:
        if self.held():
            self.store.delete(self.key)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
