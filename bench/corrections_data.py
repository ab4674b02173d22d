"""Real corrections for the queue benchmarks, built from zsRE records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bench.common import SHARED_DATA
from mend.data import load_zsre
from mend.data.records import EditRecord


def zsre_records(n: int) -> list[EditRecord]:
    """The 537 held-out zsRE records first, then training-file records, distinct prompts."""
    pool = load_zsre(SHARED_DATA / "zsre" / "zsre_mend_eval-dev-537.json").records
    if n > len(pool):
        pool = pool + load_zsre(SHARED_DATA / "zsre" / "zsre_mend_train-1k.json").records
    seen, out = set(), []
    for record in pool:
        key = record.prompt.strip().lower()
        if key not in seen:
            seen.add(key)
            out.append(record)
        if len(out) == n:
            return out
    raise ValueError(f"only {len(out)} distinct zsRE prompts available, {n} asked")


def as_corrections(records: list[EditRecord]) -> list[dict]:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    return [
        {
            "id": f"zsre-{i:05d}",
            "prompt": r.prompt,
            "target": r.target,
            **({"subject": r.subject} if r.subject else {}),
            "rephrases": list(r.rephrases),
            "locality": [{"prompt": p.prompt, "answer": p.answer} for p in r.locality],
            "requested_by": "benchmark",
            "requested_at": (start + timedelta(seconds=i)).isoformat(),
        }
        for i, r in enumerate(records)
    ]
