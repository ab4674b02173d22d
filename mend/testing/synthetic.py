"""Small synthetic editing datasets spelled in the tiny tokenizer's vocabulary
(:mod:`mend.testing.tokenizer`)."""

from __future__ import annotations

import random

from mend.data.records import EditRecord, LocalityProbe

SUBJECTS = ["France", "Rome", "Paris", "Hamlet", "Jean", "Danielle", "the Tiber", "the Beatles",
            "Shakespeare", "Italian", "English", "French", "water", "the song", "the Eiffel Tower"]
OBJECTS = ["Rome", "Paris", "French", "English", "Italian", "Jean", "Hamlet", "water", "1965", "100"]
TEMPLATES = [
    ("The capital of {} is", "What is the capital of {}?"),
    ("The mother tongue of {} is", "Which language does {} speak?"),
    ("{} is located in", "Where is {} located?"),
]
LOCALITY = [
    ("Who wrote Hamlet?", "William Shakespeare"),
    ("Water boils at", "100 degrees"),
    ("nq question: who sang the song?", "The Beatles"),
    ("Which river flows through Rome?", "The Tiber"),
]


def synthetic_records(n: int, seed: int = 0) -> list[EditRecord]:
    """``n`` records (one locality probe each), the same for the same ``seed``."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        subject = rng.choice(SUBJECTS)
        prompt, rephrase = rng.choice(TEMPLATES)
        loc = LOCALITY[i % len(LOCALITY)]
        records.append(
            EditRecord(
                record_id=f"syn-{seed}-{i}",
                prompt=prompt.format(subject),
                target=rng.choice(OBJECTS),
                rephrases=(rephrase.format(subject),),
                locality=(LocalityProbe(*loc),),
                source="synthetic",
            )
        )
    return records
