"""Prepare editing data for a pipeline run: resolve, validate, split, hash and store.

A prepared dataset lives in the artifact store under ``datasets/<input_hash>/``::

    train.jsonl  val.jsonl  test.jsonl   canonical records (mend.data.record_to_dict), one a line
    report.json                          what was read, loaded and rejected (file, index, field, reason)
    manifest.json                        written last: counts, hashes and keys of the files above

``input_hash`` covers the bytes of every input file and every setting that changes
the result, so the same inputs are prepared once (the manifest is the cache entry);
``dataset_hash`` is the content hash of the training split the editor learns from.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mend.data import (
    EditRecord,
    LoadReport,
    LocalityProbe,
    RecordError,
    dataset_hash,
    load_dataset,
    record_to_dict,
    split_of,
)
from mend.data.bundled import resolve as resolve_bundled
from mend.pipeline.config import DataSpec
from mend.storage import ArtifactStore, S3Config, S3Store, sha256_file
from mend.storage.s3 import parse_s3_uri

PREPARE_SCHEMA = "mend.pipeline.prepare/v1"
SPLITS = ("train", "val", "test")


class DataValidationError(ValueError):
    """Too many input records are malformed (or none are usable)."""


# -- sources --------------------------------------------------------------------------
def resolve_source(source: str, cache_dir: str | os.PathLike[str]) -> Path:
    """A local path for ``source``: ``bundled:NAME``, ``s3://bucket/key`` or a path.

    S3 objects are downloaded into ``cache_dir``. Objects uploaded by other tools
    carry no recorded sha256, so none is required here; the content hash of the
    downloaded file is what the pipeline records.
    """
    bundled = resolve_bundled(source)
    if bundled is not None:
        return bundled
    if source.startswith("s3://"):
        bucket, key = parse_s3_uri(source)
        if not key:
            raise ValueError(f"{source!r} names a bucket, not an object")
        store = S3Store(bucket, config=S3Config(require_checksum=False))
        target = Path(cache_dir) / "sources" / hashlib.sha256(source.encode()).hexdigest()[:16] / Path(key).name
        return store.get_file(key, target)
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"input data not found: {source}")
    return path


def input_hash(paths: Sequence[Path], spec: DataSpec) -> str:
    """Hash of the input files' bytes and of every setting that shapes the prepared data."""
    settings = spec.model_dump(mode="json", exclude={"sources"})
    payload = {
        "schema": PREPARE_SCHEMA,
        "settings": settings,
        "sources": [
            {"sha256": sha256_file(p), "format": s.format, "limit": s.limit, "split": s.split}
            for p, s in zip(paths, spec.sources, strict=True)
        ],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


# -- validation -----------------------------------------------------------------------
@dataclass
class Validated:
    records: list[EditRecord]
    reports: list[LoadReport]
    errors: list[RecordError] = field(default_factory=list)
    pins: list[str | None] = field(default_factory=list)  # per record: the split its source pins it to

    @property
    def n_read(self) -> int:
        return sum(r.n_read for r in self.reports)

    @property
    def n_rejected(self) -> int:
        return len(self.errors)


def validate_sources(paths: Sequence[Path], spec: DataSpec) -> Validated:
    """Load every source, collecting each rejected record with file, index, field and reason.

    A record whose id was already loaded from an earlier file is rejected too (the
    same edit twice would leak across splits). Raises :class:`DataValidationError`
    when more than ``spec.max_error_fraction`` of the records are rejected.
    """
    records: list[EditRecord] = []
    reports: list[LoadReport] = []
    errors: list[RecordError] = []
    pins: list[str | None] = []
    seen: dict[str, str] = {}
    for path, source in zip(paths, spec.sources, strict=True):
        loaded = load_dataset(path, source.format, on_error=spec.on_error, limit=source.limit)
        reports.append(loaded.report)
        errors.extend(loaded.report.errors)
        # Position in the file of each loaded record: the indices that were not skipped.
        skipped = {e.index for e in loaded.report.errors}
        file_index = [i for i in range(loaded.report.n_read) if i not in skipped]
        if len(file_index) != len(loaded.records):
            file_index = [None] * len(loaded.records)
        for index, record in zip(file_index, loaded.records, strict=True):
            if record.record_id in seen:
                errors.append(RecordError(path.name, index, "record_id",
                                          f"duplicate of {record.record_id!r} already loaded from "
                                          f"{seen[record.record_id]}"))
                continue
            seen[record.record_id] = f"{path.name}[{index}]"
            records.append(record)
            pins.append(source.split)
    total = sum(r.n_read for r in reports)
    if not records:
        raise DataValidationError(f"no usable records in {[str(p) for p in paths]}")
    if total and len(errors) / total > spec.max_error_fraction:
        first = "; ".join(str(e) for e in errors[:5])
        raise DataValidationError(
            f"{len(errors)} of {total} records are malformed (more than "
            f"{spec.max_error_fraction:.0%}): {first}"
        )
    return Validated(records, reports, errors, pins)


# -- splitting ------------------------------------------------------------------------
def split_dataset(
    records: Sequence[EditRecord], spec: DataSpec, pins: Sequence[str | None] | None = None,
) -> dict[str, list[EditRecord]]:
    """Deterministic split; records with the same ``group_by`` key land together.

    ``pins`` (one per record, :attr:`Validated.pins`) puts a record in the split its
    source is pinned to; the others share the splits no source is pinned to
    (:meth:`DataSpec.unpinned_fractions`), except that a record whose key a pinned
    record has follows that record, so no group straddles a pinned split and another.
    """
    pins = list(pins) if pins is not None else [None] * len(records)
    if len(pins) != len(records):
        raise ValueError(f"{len(pins)} pins for {len(records)} records")

    def key_of(record: EditRecord) -> str:
        if spec.group_by == "subject" and record.subject:
            return f"subject:{record.subject}"
        return record.record_id

    pinned_keys: dict[str, str] = {}
    for record, pin in zip(records, pins, strict=True):
        if pin is not None:
            pinned_keys.setdefault(key_of(record), pin)
    fractions = spec.unpinned_fractions()
    out: dict[str, list[EditRecord]] = {name: [] for name in spec.splits}
    for record, pin in zip(records, pins, strict=True):
        key = key_of(record)
        out[pin or pinned_keys.get(key) or split_of(key, fractions, spec.seed)].append(record)
    for name in SPLITS:
        if not out[name]:
            raise DataValidationError(
                f"the {name!r} split is empty ({sum(map(len, out.values()))} records in all): "
                "add data or change data.splits"
            )
    return out


# -- canonical JSONL ------------------------------------------------------------------
def record_from_dict(d: dict[str, Any]) -> EditRecord:
    """Inverse of :func:`mend.data.record_to_dict`."""
    return EditRecord(
        record_id=d["record_id"],
        prompt=d["prompt"],
        target=d["target"],
        rephrases=tuple(d.get("rephrases", ())),
        locality=tuple(LocalityProbe(p["prompt"], p["answer"]) for p in d.get("locality", ())),
        old_target=d.get("old_target"),
        subject=d.get("subject"),
        kind=d.get("kind", "qa"),
        source=d.get("source", ""),
        extra=d.get("extra") or {},
    )


def to_jsonl(records: Iterable[EditRecord]) -> bytes:
    return "".join(json.dumps(record_to_dict(r), ensure_ascii=True) + "\n" for r in records).encode()


def from_jsonl(data: bytes | str) -> list[EditRecord]:
    text = data.decode() if isinstance(data, bytes) else data
    return [record_from_dict(json.loads(line)) for line in text.splitlines() if line.strip()]


# -- the store ------------------------------------------------------------------------
def dataset_prefix(in_hash: str) -> str:
    return f"datasets/{in_hash}"


def find_prepared(store: ArtifactStore, in_hash: str) -> dict | None:
    """The manifest of an earlier preparation of the same inputs, if complete."""
    key = f"{dataset_prefix(in_hash)}/manifest.json"
    if not store.exists(key):
        return None
    manifest = store.get_json(key)
    if all(store.exists(manifest["keys"][name]) for name in SPLITS):
        return manifest
    return None


def report_dict(validated: Validated) -> dict[str, Any]:
    return {
        "n_read": validated.n_read,
        "n_loaded": len(validated.records),
        "n_rejected": validated.n_rejected,
        "files": [
            {"path": r.path, "format": r.format, "read": r.n_read, "loaded": r.n_loaded,
             "skipped": r.n_skipped, "warnings": len(r.warnings)}
            for r in validated.reports
        ],
        "rejected": [
            {"file": e.file, "index": e.index, "field": e.field, "reason": e.reason}
            for e in validated.errors
        ],
        "warnings": [
            {"file": w.file, "index": w.index, "field": w.field, "reason": w.reason}
            for r in validated.reports for w in r.warnings
        ],
    }


def write_prepared(
    store: ArtifactStore, in_hash: str, splits: dict[str, list[EditRecord]], validated: Validated,
    sources: Sequence[str],
) -> dict[str, Any]:
    """Upload the splits and report, then the manifest (last: its presence marks completion)."""
    prefix = dataset_prefix(in_hash)
    keys = {name: f"{prefix}/{name}.jsonl" for name in SPLITS}
    for name in SPLITS:
        store.put_bytes(keys[name], to_jsonl(splits[name]))
    store.put_json(f"{prefix}/report.json", report_dict(validated))
    manifest = {
        "schema": PREPARE_SCHEMA,
        "input_hash": in_hash,
        "store_uri": store.uri,
        "sources": list(sources),
        "keys": {**keys, "report": f"{prefix}/report.json"},
        "counts": {name: len(splits[name]) for name in SPLITS},
        "hashes": {name: dataset_hash(splits[name]) for name in SPLITS},
        "dataset_hash": dataset_hash(splits["train"]),
        "n_read": validated.n_read,
        "n_rejected": validated.n_rejected,
    }
    store.put_json(f"{prefix}/manifest.json", manifest)
    return manifest


def load_split(store: ArtifactStore, manifest: dict[str, Any], name: str) -> list[EditRecord]:
    """Read one split back (checksum-verified by the store)."""
    records = from_jsonl(store.get_bytes(manifest["keys"][name]))
    if dataset_hash(records) != manifest["hashes"][name]:
        raise ValueError(f"split {name!r} in {store.uri} does not match its manifest hash")
    return records
