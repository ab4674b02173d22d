"""Text as compared for sameness: one rule for the corrections queue (duplicates,
contradictions, agreeing targets) and for evaluation (agreeing targets), so the two
never disagree about whether two strings say the same."""

from __future__ import annotations

import unicodedata


def normalise(text: str) -> str:
    """Text as compared for duplicates and contradictions, everywhere in the queue.

    Unicode NFKC (full-width and compatibility forms fold to their plain letters),
    format characters removed (category Cf: zero-width spaces and joiners, byte-order
    marks, bidirectional controls), case folded and whitespace collapsed, so text
    that reads the same compares equal.
    """
    folded = unicodedata.normalize("NFKC", text)
    visible = "".join(ch for ch in folded if unicodedata.category(ch) != "Cf")
    return " ".join(visible.casefold().split())
