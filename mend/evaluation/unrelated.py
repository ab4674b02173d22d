"""Which locality probes are about something a stored correction changed.

A locality probe stands for an input no correction should change. With thousands of
corrections stored, some probes of one record ask about the subject of another: a
CounterFact neighbourhood prompt about London while London's twin city is itself
corrected. Such a probe may rightly change, so at scale locality is reported both over
every probe and over the probes that name no stored correction's subject.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence


def naming_subjects(texts: Sequence[str], subjects: Iterable[str | None]) -> list[bool]:
    """Per text, whether it names one of ``subjects`` as a whole word or phrase
    (case-insensitive; empty subjects are ignored)."""
    wanted = sorted({s.strip().lower() for s in subjects if s and s.strip()})
    found = []
    for text in texts:
        lowered = text.lower()
        found.append(any(
            subject in lowered and re.search(rf"(?<!\w){re.escape(subject)}(?!\w)", lowered) is not None
            for subject in wanted
        ))
    return found
