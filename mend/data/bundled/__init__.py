"""Small real datasets shipped inside the package (see ``PROVENANCE.md`` beside this file).

The pipeline refers to them as ``bundled:NAME``, e.g. ``bundled:zsre_sample.json``, so
that its default configuration works on a fresh clone with no other data.
"""

from __future__ import annotations

from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent
PREFIX = "bundled:"


def bundled_path(name: str) -> Path:
    """The path of the bundled dataset ``name`` (a file beside this module)."""
    path = BUNDLED_DIR / name
    if name.startswith((".", "_")) or "/" in name or not path.is_file() or path.suffix not in (".json", ".jsonl"):
        available = sorted(p.name for p in BUNDLED_DIR.iterdir() if p.suffix in (".json", ".jsonl"))
        raise FileNotFoundError(f"no bundled dataset {name!r}; available: {available}")
    return path


def resolve(source: str) -> Path | None:
    """``bundled:NAME`` -> its path; anything else -> ``None``."""
    return bundled_path(source[len(PREFIX) :]) if source.startswith(PREFIX) else None
