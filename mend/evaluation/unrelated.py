"""Which locality probes are about something a stored correction changed.

A locality probe stands for an input no correction should change. With thousands of
corrections stored, some probes of one record ask about the subject of another: a
CounterFact neighbourhood prompt about London while London's twin city is itself
corrected. Many ask that very fact ("The twin city of Seoul is" expecting Sydney while a
stored correction moves Seoul's twin city from Sydney to Athens): those must change.
So at scale locality is reported over every probe, over the probes that name no stored
correction's subject, and over those that ask no stored correction's fact (they name no
stored subject, or name one but expect an answer other than the one its correction
replaced: another fact about that subject, which must stay).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from mend.data.records import EditRecord


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def _named(text: str, subjects: Iterable[str]) -> list[str]:
    """Which of ``subjects`` (normalised) ``text`` names as a whole word or phrase."""
    lowered = _normal(text)
    return [s for s in subjects if s in lowered and re.search(rf"(?<!\w){re.escape(s)}(?!\w)", lowered)]


def naming_subjects(texts: Sequence[str], subjects: Iterable[str | None]) -> list[bool]:
    """Per text, whether it names one of ``subjects`` as a whole word or phrase
    (case-insensitive; empty subjects are ignored)."""
    wanted = sorted({_normal(s) for s in subjects if s and s.strip()})
    return [bool(_named(text, wanted)) for text in texts]


def asking_stored_facts(probes: Sequence[tuple[str, str]], records: Iterable[EditRecord]) -> list[bool]:
    """Per ``(prompt, answer)`` probe, whether it asks a fact a stored record corrects: the
    prompt names the record's subject and the probe expects the answer the record
    replaces (its ``old_target``). Records without a subject or an old target ask none."""
    replaced: dict[str, set[str]] = {}
    for record in records:
        if record.subject and record.subject.strip() and record.old_target:
            replaced.setdefault(_normal(record.subject), set()).add(_normal(record.old_target))
    return [any(_normal(answer) in replaced[s] for s in _named(prompt, replaced)) for prompt, answer in probes]
