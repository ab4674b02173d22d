"""Deterministic splitting and mixing of edit records.

Splits assign each record by a hash of ``(seed, record_id)``, so a record's split
depends on nothing else: not the file order, not which other records are present.
Adding records to a dataset therefore never moves old ones between train and val,
and records with equal ids (the same case in two files) always land together.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

from mend.data.canonical import dataset_hash, stable_int
from mend.data.records import EditRecord

__all__ = ["dataset_hash", "mix", "split_of", "split_records"]

_SCALE = float(2**64)


def _check_fractions(fractions: Mapping[str, float]) -> list[tuple[str, float]]:
    if not fractions:
        raise ValueError("fractions must name at least one split")
    for name, frac in fractions.items():
        if not isinstance(frac, int | float) or not math.isfinite(frac) or frac < 0:
            raise ValueError(
                f"fraction for split {name!r} must be a finite number >= 0, got {frac!r}"
            )
    total = sum(fractions.values())
    if not math.isclose(total, 1.0, rel_tol=0, abs_tol=1e-9):
        raise ValueError(f"split fractions must sum to 1, got {total} from {dict(fractions)}")
    # Sorted by name: a config that lists the same splits in another order must
    # give the same assignment.
    return sorted(fractions.items())


def split_of(record_id: str, fractions: Mapping[str, float], seed: int = 0) -> str:
    """The split ``record_id`` belongs to under ``fractions`` and ``seed``."""
    return _assign(record_id, _check_fractions(fractions), seed)


def _assign(record_id: str, ordered: list[tuple[str, float]], seed: int) -> str:
    u = stable_int("split", seed, record_id) / _SCALE  # uniform in [0, 1)
    cumulative = 0.0
    for name, frac in ordered:
        cumulative += frac
        if u < cumulative:
            return name
    # Rounding can leave the sum a hair under 1: the remainder goes to the last
    # split with a non-zero share.
    return next(name for name, frac in reversed(ordered) if frac > 0)


def split_records(
    records: Sequence[EditRecord], fractions: Mapping[str, float], seed: int = 0
) -> dict[str, list[EditRecord]]:
    """Partition ``records`` into named splits of roughly the given ``fractions``.

    ``fractions`` maps split names to shares summing to 1, e.g.
    ``{"train": 0.9, "val": 0.1}``. Each record goes where the hash of
    ``(seed, record_id)`` falls, so sizes are close to, not exactly, the shares
    (small datasets can leave a small split empty). Within a split, records keep
    their input order. Every name in ``fractions`` is a key of the result.
    """
    ordered = _check_fractions(fractions)
    out: dict[str, list[EditRecord]] = {name: [] for name in fractions}
    for record in records:
        out[_assign(record.record_id, ordered, seed)].append(record)
    return out


def mix(
    datasets: Sequence[Sequence[EditRecord]],
    weights: Sequence[float] | None = None,
    seed: int = 0,
) -> list[EditRecord]:
    """Interleave several datasets into one list, deterministically.

    Every record of every dataset appears exactly once, and each dataset keeps its
    own order. At each position the next record is drawn from dataset ``i`` with
    probability proportional to ``weights[i]`` among the datasets not yet
    exhausted; with ``weights=None`` proportional to the records each has left,
    which spreads every dataset evenly through the result. ``seed`` fixes the draw
    (``random.Random`` seeded with a string hashes it with SHA-512, not Python's
    salted ``hash()``, so the draw is the same in every run).
    """
    if weights is not None:
        if len(weights) != len(datasets):
            raise ValueError(f"{len(weights)} weights for {len(datasets)} datasets")
        for i, w in enumerate(weights):
            if not isinstance(w, int | float) or not math.isfinite(w) or w <= 0:
                raise ValueError(f"weight {i} must be a finite number > 0, got {w!r}")
    rng = random.Random(f"mix:{seed}")
    positions = [0] * len(datasets)
    total = sum(len(d) for d in datasets)
    out: list[EditRecord] = []
    while len(out) < total:
        live = [i for i, d in enumerate(datasets) if positions[i] < len(d)]
        if weights is None:
            shares = [float(len(datasets[i]) - positions[i]) for i in live]
        else:
            shares = [float(weights[i]) for i in live]
        # choices() with cumulative weights is a single uniform draw: deterministic.
        (chosen,) = rng.choices(live, weights=shares, k=1)
        out.append(datasets[chosen][positions[chosen]])
        positions[chosen] += 1
    return out
