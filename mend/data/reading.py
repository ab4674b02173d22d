"""Reading a data file into raw JSON values, one per record.

Two container formats: a ``.jsonl`` file holds one JSON value per line (blank lines
ignored); any other file holds one JSON list. A whole file that cannot be parsed is
a :class:`DatasetFileError`; in JSON Lines a single bad line is only that record's
problem, so it comes back as an :class:`InvalidLine` for the loader to report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mend.data.errors import DatasetFileError

JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})


@dataclass(frozen=True)
class InvalidLine:
    """Stands in for a JSON Lines record whose line is not valid JSON."""

    line_number: int  # 1-based, as editors show it
    reason: str


def is_jsonl(path: Path) -> bool:
    """Whether ``path`` is read as JSON Lines (decided by its suffix)."""
    return path.suffix.lower() in JSONL_SUFFIXES


def _read_text(path: Path) -> str:
    try:
        # utf-8-sig: a BOM written by some editors is not part of the JSON.
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetFileError(
            str(path), f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc


def type_name(value: object) -> str:
    """JSON's name for the type of a parsed value, for error messages."""
    names = {
        dict: "object",
        list: "list",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def read_raw_records(path: Path, limit: int | None = None) -> list[object]:
    """The first ``limit`` (all if ``None``) raw records of ``path``.

    Raises ``FileNotFoundError`` for a missing file and :class:`DatasetFileError`
    for a file that is not a JSON list (or, for JSON Lines, not text).
    """
    text = _read_text(path)
    if is_jsonl(path):
        return _parse_jsonl(text, limit)
    try:
        data = json.loads(text)
    # ValueError covers JSONDecodeError and Python's limit on huge integer literals;
    # RecursionError a pathologically nested document.
    except (ValueError, RecursionError) as exc:
        raise DatasetFileError(str(path), f"not valid JSON: {exc}") from exc
    if not isinstance(data, list):
        raise DatasetFileError(
            str(path), f"expected a JSON list of records, got a JSON {type_name(data)}"
        )
    return data if limit is None else data[:limit]


def _parse_jsonl(text: str, limit: int | None) -> list[object]:
    out: list[object] = []
    # split("\n"), not splitlines(): the latter also breaks at U+2028 and other
    # separators that may appear unescaped inside JSON strings.
    for line_number, line in enumerate(text.split("\n"), start=1):
        if limit is not None and len(out) >= limit:
            break
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except (ValueError, RecursionError) as exc:
            out.append(InvalidLine(line_number, f"line {line_number} is not valid JSON: {exc}"))
    return out
