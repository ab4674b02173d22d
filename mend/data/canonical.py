"""Canonical serialisation and hashing of edit records.

Hashes here identify data in registries and run metadata, so they must be equal
across runs, machines and Python versions: they hash a canonical JSON text (sorted
keys, no whitespace, ASCII escapes) and never use Python's salted ``hash()``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from mend.data.records import EditRecord

# Bumped when the serialisation below changes, so old and new hashes never collide.
HASH_SCHEMA = "mend.data.EditRecord/v1"


def record_to_dict(record: EditRecord) -> dict[str, Any]:
    """A JSON-ready dict with every field of ``record`` (``extra`` included)."""
    return {
        "record_id": record.record_id,
        "prompt": record.prompt,
        "target": record.target,
        "rephrases": list(record.rephrases),
        "locality": [{"prompt": p.prompt, "answer": p.answer} for p in record.locality],
        "old_target": record.old_target,
        "subject": record.subject,
        "kind": record.kind,
        "source": record.source,
        "extra": record.extra,
    }


def canonical_json(value: Any) -> str:
    """Deterministic JSON text for ``value``.

    ``ensure_ascii`` keeps lone surrogates (valid in JSON input, invalid in UTF-8)
    encodable; ``allow_nan`` writes NaN as a fixed token rather than failing.
    Non-JSON values raise ``TypeError``: a hash must not depend on ``repr``.
    """
    return json.dumps(
        value, sort_keys=True, ensure_ascii=True, allow_nan=True, separators=(",", ":")
    )


def stable_int(*parts: Any) -> int:
    """A 64-bit integer derived from ``parts``, equal across runs and machines."""
    digest = hashlib.sha256(canonical_json(list(parts)).encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big")


def short_digest(*parts: Any, length: int = 16) -> str:
    """Hex digest of ``parts`` for content-derived record ids."""
    return hashlib.sha256(canonical_json(list(parts)).encode("ascii")).hexdigest()[:length]


def dataset_hash(records: Iterable[EditRecord]) -> str:
    """sha256 hex digest of ``records`` in order.

    Order-sensitive on purpose: two datasets with the same records in another order
    train differently. Every field counts, ``extra`` included.
    """
    h = hashlib.sha256(HASH_SCHEMA.encode("ascii"))
    for record in records:
        # One line per record: no record's text can forge a boundary, because the
        # JSON text of a record never contains a raw newline.
        h.update(b"\n")
        h.update(canonical_json(record_to_dict(record)).encode("ascii"))
    return h.hexdigest()
