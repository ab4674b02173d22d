"""The active corrections of a published version, held once: load, add, remove, solve, publish.

An apply run, a rollback and the registration of a version all need the same thing: the
edit made of every active correction. :class:`ActiveSet` loads it once from the
version store, keeps each correction's part by id, combines new batches with it the way
their aggregation combines (stacked, re-solved or routed: :meth:`Edit.concat`) and
publishes the result as the next version, after which it *is* the active set: nothing
is read back from the store.
"""

from __future__ import annotations

from collections.abc import Iterable

from mend.corrections.versions import ActiveEntry, VersionStore
from mend.edit import Edit


class ActiveSet:
    """The corrections active in ``version`` (None: nothing published) of ``versions``."""

    def __init__(self, versions: VersionStore, version: int | None):
        self.versions = versions
        self.version = version
        self.entries = versions.active(version)
        stored = versions.load_edit(self.entries)
        # Each active correction's part, by id, so a batch can replace some without a read.
        self.parts: dict[str, Edit] = {}
        if stored is not None:
            for index, request in enumerate(stored.requests):
                self.parts[request.request_id] = stored.select([index])
        # The combined edit as loaded or last published: once solved it keeps what a
        # further solve reuses (least squares: each matrix's normal equations).
        self.edit: Edit | None = stored

    @classmethod
    def latest(cls, versions: VersionStore) -> ActiveSet:
        return cls(versions, versions.latest())

    @property
    def ids(self) -> list[str]:
        return [i for e in self.entries for i in e.ids]

    def entries_without(self, ids: Iterable[str]) -> list[ActiveEntry]:
        """The active entries less the corrections ``ids`` (entries left empty dropped)."""
        ids = set(ids)
        kept = [ActiveEntry(e.path, tuple(i for i in e.ids if i not in ids)) for e in self.entries]
        return [e for e in kept if e.ids]

    def with_batch(self, new: Edit | None, replaced: Iterable[str] = ()) -> Edit | None:
        """The edit of the active corrections, minus ``replaced``, plus ``new``."""
        replaced = set(replaced)
        if not replaced:
            kept = [self.edit] if self.edit is not None else []
        else:
            kept = [p for cid, p in self.parts.items() if cid not in replaced]
        parts = [*kept, *([new] if new is not None else [])]
        return Edit.concat(parts) if parts else None

    def publish(self, new: Edit | None, full: Edit | None, replaced: Iterable[str], details: dict) -> int:
        """Publish ``full`` (= :meth:`with_batch` of ``new`` and ``replaced``) as the next
        version, manifest last; this set then holds it. Without ``new`` it is a rollback of
        ``replaced``."""
        replaced = set(replaced)
        version = self.versions.publish(self.version, new, self.entries_without(replaced), details, full_edit=full)
        for cid in replaced:
            self.parts.pop(cid, None)
        for offset, request in enumerate(new.requests if new is not None else []):
            self.parts[request.request_id] = new.select([offset])
        self.version, self.edit = version, full
        self.entries = self.versions.active(version)
        return version
