"""Published corrected-model versions (immutable, complete or absent), and the active
set of one of them, held in memory while the next is made.

A version ``n`` lives under ``versions/<n>/``. An apply run writes its files into a
fresh attempt folder ``versions/<n>/<attempt>/`` (never touched by any other run) and
then creates ``versions/<n>/manifest.json`` with the store's atomic
``put_if_absent``. The manifest is the commit point: a version exists exactly when its
manifest does, two runs can never both publish ``n``, and a run killed at any moment
leaves either the previous version or the new one. Attempt folders no manifest points
to are garbage and are removed by :meth:`VersionStore.collect_garbage`.

A manifest lists the *active* corrections as references to the delta files of the
versions that added them, so a correction's low-rank factors are stored once, and
rolling one back is a new manifest without it. A least-squares delta's key preconditioners
(the editor's, the same for every batch and by far its largest file) are kept once per
content hash under ``penalties/`` and fetched next to each delta on load. The active
least-squares corrections are solved together with the newest active delta's
regularisers and key preconditioner (:meth:`mend.edit.Edit.concat`).

Each version also carries its full edit as a PEFT adapter, for multi-LoRA serving.
With many least-squares corrections that adapter is a dense change per matrix (44 MB
for SmolLM2), published again with every version; :meth:`VersionStore.prune_adapters`
deletes those of older versions. Their deltas stay, so
:meth:`VersionStore.export_adapter` rebuilds any version's adapter on demand.

An apply run, a rollback and the registration of a version all need the same thing: the
edit made of every active correction. :class:`ActiveSet` loads it once from the
version store, keeps each correction's part by id, combines new batches with it the way
their aggregation combines (stacked, re-solved or routed: :meth:`Edit.concat`) and
publishes the result as the next version, after which it *is* the active set: nothing
is read back from the store.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mend.corrections.schema import now
from mend.edit import Edit, key_precond_file
from mend.storage import ArtifactNotFoundError, ArtifactStore

MANIFEST_FORMAT = "mend-corrected-model/1"


class VersionConflictError(RuntimeError):
    """Another run published this version number first."""


@dataclass(frozen=True)
class ActiveEntry:
    """Corrections whose factors live in one stored delta (``path`` on the store)."""

    path: str
    ids: tuple[str, ...]

    def as_json(self) -> dict:
        return {"path": self.path, "ids": list(self.ids)}

    @staticmethod
    def from_json(obj: dict) -> ActiveEntry:
        return ActiveEntry(obj["path"], tuple(obj["ids"]))


class VersionStore:
    def __init__(self, store: ArtifactStore, prefix: str = "corrections"):
        self.store = store
        self.root = f"{prefix.strip('/')}/versions"

    def _dir(self, version: int) -> str:
        return f"{self.root}/{version:06d}"

    def manifest_key(self, version: int) -> str:
        return f"{self._dir(version)}/manifest.json"

    def versions(self) -> list[int]:
        """Published versions, ascending."""
        found = []
        for key in self.store.list(self.root + "/"):
            parts = key[len(self.root) + 1 :].split("/")
            if len(parts) == 2 and parts[1] == "manifest.json" and parts[0].isdigit():
                found.append(int(parts[0]))
        return sorted(found)

    def latest(self) -> int | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def manifest(self, version: int) -> dict:
        try:
            return self.store.get_json(self.manifest_key(version))
        except ArtifactNotFoundError:
            raise ArtifactNotFoundError(f"version {version} is not published") from None

    def manifests(self) -> Iterator[tuple[int, dict]]:
        """``(version, manifest)`` of every published version, ascending, read as many at
        once as the store reads concurrently."""
        versions = self.versions()
        documents = self.store.get_json_many(self.manifest_key(v) for v in versions)
        for version, (_, manifest) in zip(versions, documents, strict=True):
            if isinstance(manifest, ArtifactNotFoundError):
                raise ArtifactNotFoundError(f"version {version} is not published") from None
            if isinstance(manifest, Exception):
                raise manifest
            yield version, manifest

    def active(self, version: int | None) -> list[ActiveEntry]:
        if version is None:
            return []
        return [ActiveEntry.from_json(e) for e in self.manifest(version)["active"]]

    def _pruned_key(self, version: int) -> str:
        return f"{self._dir(version)}/adapter-pruned.json"

    def _adapter_pruned(self, version: int) -> bool:
        return self.store.exists(self._pruned_key(version))

    def adapter(self, version: int) -> str | None:
        """Where version ``version``'s PEFT adapter lies on the store; None when it has
        none or it was pruned (:meth:`export_adapter` rebuilds it)."""
        key = self.manifest(version).get("adapter")
        return None if key is None or self._adapter_pruned(version) else key

    def prune_adapters(self, keep: int) -> list[int]:
        """Delete the PEFT adapters of all but the newest ``keep`` versions; returns the
        versions pruned now. Manifests and deltas stay, so every version can still be
        served, rolled back to, verified and have its adapter rebuilt. Safe to repeat: a
        prune interrupted after its marker finishes on the next call."""
        if keep < 1:
            raise ValueError(f"keep at least the newest version's adapter, got keep={keep}")
        pruned = []
        for version in self.versions()[:-keep]:
            manifest = self.manifest(version)
            if manifest.get("adapter") is None:
                continue
            # The marker first: a version whose adapter is partly deleted is already
            # marked as having none.
            if not self._adapter_pruned(version):
                self.store.put_json(self._pruned_key(version), {"pruned_at": now().isoformat(), "files": sorted(manifest["files"])})
                pruned.append(version)
            for key in manifest["files"]:
                if self.store.exists(key):
                    self.store.delete(key)
        return pruned

    def export_adapter(self, version: int, directory: str | Path, routed: bool = False) -> Path:
        """Write version ``version``'s full edit as a PEFT adapter to ``directory``,
        rebuilt from its active deltas (a pruned version's too). ``routed``: a scoped
        version as one adapter per correction plus the router that picks them per
        request (:mod:`mend.export.routed_peft`)."""
        edit = self.load_edit(self.active(version))
        if edit is None:
            raise ValueError(f"version {version} has no active corrections, so no adapter")
        if routed:
            from mend.export.routed_peft import save_routed_adapters

            return save_routed_adapters(edit, directory)
        return edit.to_peft(directory, edit.base_model.get("name"))

    def added_by(self, entry: ActiveEntry) -> int:
        """The version whose apply run stored ``entry``'s delta."""
        return int(entry.path[len(self.root) + 1 :].split("/", 1)[0])

    def load_edit(self, entries: list[ActiveEntry]) -> Edit | None:
        """The combined edit of the given active entries (None when there are none)."""
        parts = []
        shared: dict = {}  # every batch of one editor shares its preconditioner: read it once
        with tempfile.TemporaryDirectory() as tmp:
            for index, entry in enumerate(entries):
                local = Path(tmp) / str(index)
                self.store.download_dir(entry.path, local)
                self._fetch_key_precond(local, shared)
                edit = Edit.load(local, shared_cache=shared)
                keep = [i for i, r in enumerate(edit.requests) if r.request_id in set(entry.ids)]
                if len(keep) != len(entry.ids):
                    missing = set(entry.ids) - {edit.requests[i].request_id for i in keep}
                    raise ValueError(f"{entry.path} lacks corrections {sorted(missing)}")
                parts.append(edit.select(keep))
        return Edit.concat(parts) if parts else None

    def _key_precond_key(self, sha256: str) -> str:
        # "penalties/": the folder's name in stores written before the file was renamed.
        return f"{self.root}/penalties/{sha256}.safetensors"

    def _share_key_precond(self, delta_dir: Path) -> None:
        """Move a saved delta's key-preconditioner file to its content-addressed key (once)."""
        file = key_precond_file(json.loads((delta_dir / "edit.json").read_text()))
        if file is None:
            return
        path = delta_dir / file["file"]
        key = self._key_precond_key(file["sha256"])
        if not self.store.exists(key):
            self.store.put_file(key, path)
        path.unlink()

    def _fetch_key_precond(self, delta_dir: Path, cached: dict) -> None:
        file = key_precond_file(json.loads((delta_dir / "edit.json").read_text()))
        if file is not None and file["sha256"] not in cached and not (delta_dir / file["file"]).exists():
            self.store.get_file(self._key_precond_key(file["sha256"]), delta_dir / file["file"])

    def publish(
        self,
        parent: int | None,
        new_delta: Edit | None,
        active: list[ActiveEntry],
        details: dict,
        full_edit: Edit | None = None,
    ) -> int:
        """Publish version ``parent + 1``: its new delta (if any), the full edit as a PEFT
        adapter, and last the manifest. Raises :class:`VersionConflictError` if another run
        published that number first.

        ``full_edit``, when the caller already holds the combined edit of ``active`` plus
        ``new_delta`` in memory, saves reading every active delta back from the store."""
        version = (parent or 0) + 1
        attempt = f"{self._dir(version)}/{uuid.uuid4().hex[:12]}"
        entries = list(active)
        with tempfile.TemporaryDirectory() as tmp:
            if new_delta is not None and new_delta.requests:
                new_delta.save(Path(tmp) / "delta")
                self._share_key_precond(Path(tmp) / "delta")
                self.store.upload_dir(Path(tmp) / "delta", f"{attempt}/delta")
                entries.append(
                    ActiveEntry(f"{attempt}/delta", tuple(r.request_id for r in new_delta.requests))
                )
            full = full_edit if full_edit is not None else self.load_edit(entries)
            files = {}
            if full is not None:
                full.to_peft(Path(tmp) / "adapter", full.base_model.get("name"))
                for key in self.store.upload_dir(Path(tmp) / "adapter", f"{attempt}/adapter"):
                    files[key] = self.store.info(key).sha256
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": version,
            "parent": parent,
            "created_at": now().isoformat(),
            "attempt": attempt,
            "active": [e.as_json() for e in entries],
            "active_ids": [i for e in entries for i in e.ids],
            "adapter": f"{attempt}/adapter" if files else None,
            "files": files,
            **details,
        }
        if not self.store.put_if_absent(self.manifest_key(version), json.dumps(manifest, indent=2).encode()):
            self.store_cleanup(attempt)
            raise VersionConflictError(f"version {version} was published by another run")
        return version

    def store_cleanup(self, attempt: str) -> None:
        for key in self.store.list(attempt + "/"):
            self.store.delete(key)

    def collect_garbage(self) -> int:
        """Delete attempt folders that no manifest refers to; returns objects removed."""
        referenced = set()
        for _, manifest in self.manifests():
            referenced.add(manifest["attempt"])
            referenced.update(e["path"].rsplit("/", 1)[0] for e in manifest["active"])
        removed = 0
        for key in self.store.list(self.root + "/"):
            parts = key[len(self.root) + 1 :].split("/")
            if len(parts) >= 3 and f"{self.root}/{parts[0]}/{parts[1]}" not in referenced:
                self.store.delete(key)
                removed += 1
        return removed

    def verify(self, version: int) -> None:
        """Check that every file of a published version is present and intact (a pruned
        adapter excepted: its marker says it is gone on purpose)."""
        manifest = self.manifest(version)
        adapter_files = {} if self._adapter_pruned(version) else manifest["files"]
        for key, sha in adapter_files.items():
            if self.store.info(key).sha256 != sha:
                raise ValueError(f"version {version}: {key} does not match its manifest")
        for entry in manifest["active"]:
            for name in ("edit.json", "edit.safetensors"):
                self.store.info(f"{entry['path']}/{name}")
            file = key_precond_file(self.store.get_json(f"{entry['path']}/edit.json"))
            if file is not None and self.store.info(self._key_precond_key(file["sha256"])).sha256 != file["sha256"]:
                raise ValueError(f"version {version}: key preconditioner {file['sha256']} is corrupt")


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
        self._kept: tuple[frozenset[str], Edit | None] | None = None  # see _without

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
        replaced = frozenset(replaced)
        kept = self.edit if not replaced else self._without(replaced)
        return kept if new is None else new.with_others(kept)

    def _without(self, replaced: frozenset[str]) -> Edit | None:
        """The active corrections less ``replaced``, combined once per set replaced: a
        batch is shown with them many times (each strength, each refining step, judged)."""
        if self._kept is None or self._kept[0] != replaced:
            parts = [p for cid, p in self.parts.items() if cid not in replaced]
            self._kept = (replaced, Edit.concat(parts) if parts else None)
        return self._kept[1]

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
        self.version, self.edit, self._kept = version, full, None
        self.entries = self.versions.active(version)
        return version
