"""Deterministic splits, mixing and dataset hashes."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from mend.data import (
    EditRecord,
    LocalityProbe,
    dataset_hash,
    mix,
    split_of,
    split_records,
)

RECORDS = [
    EditRecord(
        record_id=f"r{i}",
        prompt=f"Prompt {i}",
        target=f"target {i}",
        rephrases=(f"Rephrase {i}",),
        locality=(LocalityProbe(f"Other {i}", "answer"),),
        kind="qa",
        source="test",
        extra={"i": i},
    )
    for i in range(400)
]


def test_split_is_a_partition_with_roughly_the_fractions():
    splits = split_records(RECORDS, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
    assert list(splits) == ["train", "val", "test"]
    ids = [r.record_id for part in splits.values() for r in part]
    assert sorted(ids) == sorted(r.record_id for r in RECORDS)
    assert 280 <= len(splits["train"]) <= 360 and 20 <= len(splits["val"]) <= 60
    # Input order is kept inside each split.
    for part in splits.values():
        assert part == sorted(part, key=RECORDS.index)


def test_split_does_not_depend_on_order_or_company():
    fractions = {"train": 0.9, "val": 0.1}
    base = split_records(RECORDS, fractions, seed=3)
    shuffled = RECORDS[:]
    random.Random(0).shuffle(shuffled)
    again = split_records(shuffled, fractions, seed=3)
    assert {k: {r.record_id for r in v} for k, v in base.items()} == {
        k: {r.record_id for r in v} for k, v in again.items()
    }
    # A record's split depends only on its id: a subset splits the same way,
    # the order the fractions are listed in does not matter either.
    for record in RECORDS[:50]:
        expected = split_of(record.record_id, fractions, seed=3)
        assert split_of(record.record_id, {"val": 0.1, "train": 0.9}, seed=3) == expected
        assert record in base[expected]
    subset = split_records(RECORDS[::7], fractions, seed=3)
    assert all(r in base[name] for name, part in subset.items() for r in part)


def test_split_depends_on_seed_and_pins_an_assignment():
    a = split_records(RECORDS, {"train": 0.5, "val": 0.5}, seed=0)
    b = split_records(RECORDS, {"train": 0.5, "val": 0.5}, seed=1)
    assert a != b
    # Pinned: the assignment must not change across runs or Python versions.
    assert [split_of(f"r{i}", {"train": 0.5, "val": 0.5}, seed=0) for i in range(8)] == PINNED


PINNED = ["train", "train", "train", "val", "train", "val", "train", "train"]


def test_split_argument_checks():
    with pytest.raises(ValueError, match="sum to 1"):
        split_records(RECORDS, {"train": 0.9, "val": 0.2})
    with pytest.raises(ValueError, match=">= 0"):
        split_records(RECORDS, {"train": 1.5, "val": -0.5})
    with pytest.raises(ValueError, match="at least one"):
        split_records(RECORDS, {})
    only = split_records(RECORDS, {"all": 1.0, "none": 0.0})
    assert len(only["all"]) == len(RECORDS) and only["none"] == []


def test_mix_is_deterministic_complete_and_keeps_each_order():
    a, b = RECORDS[:300], [replace(r, record_id=f"b{r.record_id}") for r in RECORDS[:60]]
    mixed = mix([a, b], seed=0)
    assert mixed == mix([a, b], seed=0)
    assert mixed != mix([a, b], seed=1)
    assert len(mixed) == 360
    assert [r for r in mixed if r.record_id.startswith("r")] == a
    assert [r for r in mixed if r.record_id.startswith("b")] == b
    # weights=None spreads the small dataset through the whole result.
    positions = [i for i, r in enumerate(mixed) if r.record_id.startswith("b")]
    assert positions[0] < 60 and positions[-1] > 300
    # Heavy weight on b puts b first.
    front = mix([a, b], weights=[1, 100], seed=0)[:60]
    assert sum(r.record_id.startswith("b") for r in front) > 45


def test_mix_argument_checks():
    with pytest.raises(ValueError, match="2 weights for 1 datasets"):
        mix([RECORDS], weights=[1, 1])
    with pytest.raises(ValueError, match="> 0"):
        mix([RECORDS, RECORDS], weights=[1, 0])
    assert mix([]) == [] and mix([[], RECORDS[:2]]) == RECORDS[:2]


def test_dataset_hash_pinned_and_sensitive():
    records = RECORDS[:3]
    assert dataset_hash(records) == dataset_hash(list(records))
    # Pinned: changing the serialisation must be deliberate (bump HASH_SCHEMA).
    assert dataset_hash(records) == (
        "e8cd09a1bb30ee749fc582b73e58f2de90f4fe696c40fa96afb7d22f00c48c82"
    )
    assert dataset_hash(records[::-1]) != dataset_hash(records)
    assert dataset_hash([replace(records[0], target="other")]) != dataset_hash(records[:1])
    changed_extra = [replace(records[0], extra={"i": 99})]
    assert dataset_hash(changed_extra) != dataset_hash(records[:1])
    assert dataset_hash([]) != dataset_hash(records[:1])
