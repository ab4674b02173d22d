"""The loop every loader shares: read, convert record by record, report, hash.

A format module supplies only a converter (one raw record -> one
:class:`EditRecord`) and, when records borrow from each other (locality drawn from
other claims), a finishing pass over the loaded records. Error handling, counting,
duplicate-id detection and hashing live here once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path
from typing import TypeVar

from mend.data.canonical import dataset_hash
from mend.data.derive import pick_others
from mend.data.errors import (
    ON_ERROR_CHOICES,
    LoadReport,
    MalformedRecordError,
    OnError,
    RecordError,
)
from mend.data.fields import FieldError, RecordContext
from mend.data.reading import InvalidLine, read_raw_records
from mend.data.records import EditRecord, LocalityProbe

PathArg = str | PathLike[str]
T = TypeVar("T")

Converter = Callable[[object, RecordContext], EditRecord]
"""Turns one raw JSON value into a record, or raises FieldError."""

Warn = Callable[[int, str | None, str], None]
"""``warn(position, field, reason)``: report a warning about ``records[position]``."""

Finisher = Callable[[list[EditRecord], Warn], list[EditRecord]]
"""A pass over all loaded records, for fields that depend on other records."""


@dataclass(frozen=True)
class LoadedDataset:
    """The records loaded from one file, what happened, and a hash of the result.

    ``content_hash`` is :func:`mend.data.canonical.dataset_hash` of ``records``:
    equal across runs for the same file, loader version and arguments.
    Iterating or indexing a LoadedDataset iterates or indexes its records.
    """

    records: list[EditRecord]
    report: LoadReport
    content_hash: str

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[EditRecord]:
        return iter(self.records)

    def __getitem__(self, index: int) -> EditRecord:
        return self.records[index]


def check_load_args(on_error: str, limit: int | None) -> None:
    """Reject arguments that would otherwise fail obscurely mid-load."""
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")


def load_records(
    path: PathArg,
    *,
    format: str,
    convert: Converter,
    on_error: OnError = "skip",
    limit: int | None = None,
    finish: Finisher | None = None,
) -> LoadedDataset:
    """Load ``path`` with ``convert``; the engine behind every ``load_xxx``.

    ``limit`` caps the number of records *read* from the start of the file (so the
    result is always drawn from the same prefix, whatever is skipped in it).
    Duplicate record ids are errors: a later record with an id already loaded is
    rejected, so ids stay unique within a dataset and splits stay disjoint.
    """
    check_load_args(on_error, limit)
    path = Path(path)
    raws = read_raw_records(path, limit)
    report = LoadReport(path=str(path), format=format)
    records: list[EditRecord] = []
    file_index: list[int] = []  # position in records -> index in the file
    first_seen: dict[str, int] = {}

    for index, raw in enumerate(raws):
        report.n_read += 1
        ctx = RecordContext(file=path.name, index=index)
        try:
            if isinstance(raw, InvalidLine):
                raise FieldError(None, raw.reason)
            record = convert(raw, ctx)
            if record.record_id in first_seen:
                raise FieldError(
                    ctx.id_field,
                    f"duplicate record_id {record.record_id!r} "
                    f"(first at index {first_seen[record.record_id]})",
                )
        except FieldError as exc:
            error = RecordError(path.name, index, exc.field, exc.reason)
            if on_error == "raise":
                raise MalformedRecordError(error) from None
            report.errors.append(error)
            report.n_skipped += 1
            continue
        first_seen[record.record_id] = index
        records.append(record)
        file_index.append(index)
        report.warnings.extend(ctx.warnings)
        report.n_loaded += 1

    if finish is not None:

        def warn(position: int, field: str | None, reason: str) -> None:
            report.warnings.append(RecordError(path.name, file_index[position], field, reason))

        records = finish(records, warn)

    return LoadedDataset(records=records, report=report, content_hash=dataset_hash(records))


def with_locality(add: Callable[[list[EditRecord], Warn, int], list[EditRecord]], n_locality: int) -> Finisher:
    """A ``finish`` pass giving each record ``n_locality`` locality probes with ``add``."""
    if n_locality < 0:
        raise ValueError(f"n_locality must be >= 0, got {n_locality}")
    return lambda records, warn: add(records, warn, n_locality)


def locality_from_others(
    records: list[EditRecord],
    pool: Sequence[T],
    *,
    key: Callable[[T], str],
    text: Callable[[T], str],
    probe: Callable[[T], LocalityProbe],
    n: int,
    salt: str,
    warn: Warn,
    what: str,
) -> list[EditRecord]:
    """Each record with up to ``n`` locality probes made (``probe``) of ``pool`` members
    other than its own (``key`` is a member's record id; ``pool`` sorted by it) whose
    ``text`` is not the record's prompt: the same text is no test of locality. Fewer
    than ``n`` is warned about as "only k of n ``what`` available"."""
    out: list[EditRecord] = []
    for position, record in enumerate(records):
        others = pick_others(pool, key=key, own_key=record.record_id, n=n, salt=salt,
                             accept=lambda member, prompt=record.prompt: text(member) != prompt)
        if len(others) < n:
            warn(position, None, f"only {len(others)} of {n} {what} available")
        out.append(replace(record, locality=tuple(probe(o) for o in others)))
    return out
