"""A lease on the artifact store: at most one apply run works on a queue at a time.

The lease is a JSON object ``{"owner", "expires_at", "generation"}`` created with the
store's atomic ``put_if_absent``. A crashed holder's lease expires; taking it over goes
through another atomic create keyed by the expired generation, so of several runs that
notice the expiry exactly one wins. The lease is an optimisation against wasted work:
correctness does not depend on it, because versions are published with
``put_if_absent`` too (two runs can never both publish the same version).
"""

from __future__ import annotations

import getpass
import json
import os
import posixpath
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

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
        self.acquired_at = time.time()

    def _payload(self, generation: int) -> bytes:
        return json.dumps({
            "owner": self.owner, "expires_at": time.time() + self.ttl_s, "generation": generation,
            "holder": holder_name(), "acquired_at": self.acquired_at,
        }).encode()

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
            who = held.get("holder") or held["owner"]
            raise LeaseHeldError(f"{self.key} is held by {who} for another {remaining:.0f}s")
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


def holder_name() -> str:
    """Who takes a lease, for people reading it: user@host and process id."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def inspect_lease(store: ArtifactStore, key: str) -> dict[str, Any] | None:
    """The lease at ``key`` as stored plus ``age_s`` and ``remaining_s`` (negative once
    expired), or ``None`` when nobody holds it. Read-only."""
    try:
        held = json.loads(store.get_bytes(key))
    except ArtifactNotFoundError:
        return None
    now = time.time()
    acquired = held.get("acquired_at")
    return {
        **held,
        "age_s": now - acquired if isinstance(acquired, int | float) else None,
        "remaining_s": held.get("expires_at", now) - now,
    }


def break_lease(store: ArtifactStore, key: str, *, by: str, reason: str = "") -> str | None:
    """Remove the lease at ``key`` (and half-done takeovers) whatever its holder; returns
    the key of the record kept in ``<lease folder>/broken/``, or ``None`` if it was free.

    For a lease left by a killed run. Breaking a live run's lease makes its next
    renewal fail, and two runs can still never publish the same version (versions are
    created with put_if_absent), so the worst outcome is wasted work.
    """
    held = inspect_lease(store, key)
    markers = store.list(f"{key}.takeover-")
    if held is None and not markers:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    record_key = posixpath.join(posixpath.dirname(key), "broken", f"{stamp}-{uuid.uuid4().hex[:8]}.json")
    store.put_json(record_key, {"lease": key, "held": held, "takeovers": markers, "broken_by": by,
                                "reason": reason, "at": time.time()})
    for marker in markers:
        store.delete(marker)
    store.delete(key)
    return record_key
