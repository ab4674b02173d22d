"""Deterministic derivations: content ids, picks of other records, word prefixes.

Everything here is a pure function of its inputs (via sha256, never ``random`` or
``hash()``), so a dataset loads to the same records, and the same hash, on every
run and machine.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TypeVar

from mend.data.canonical import short_digest, stable_int

T = TypeVar("T")

_WORD = re.compile(r"\S+")


def content_id(dataset: str, *parts: str) -> str:
    """A record id for formats without one, derived from the edit's content.

    Content, not file position: reordering a file must not change ids, or splits
    keyed on ids would change with it. Exact duplicates get equal ids, which the
    loader reports.
    """
    return f"{dataset}:{short_digest(*parts)}"


def pick_others(
    pool: Sequence[T],
    key: Callable[[T], str],
    own_key: str,
    n: int,
    salt: str,
    accept: Callable[[T], bool] = lambda _: True,
) -> list[T]:
    """Up to ``n`` members of ``pool`` other than the one keyed ``own_key``.

    ``pool`` must be sorted by ``key`` (so the pick depends on the set of records,
    not the file order). The walk starts at a position hashed from ``salt`` and
    ``own_key`` and takes consecutive accepted members: O(n) per record rather than
    ranking the whole pool, which matters for 10k-record files.
    """
    if n <= 0 or not pool:
        return []
    start = stable_int(salt, own_key) % len(pool)
    picked: list[T] = []
    for step in range(len(pool)):
        candidate = pool[(start + step) % len(pool)]
        if key(candidate) != own_key and accept(candidate):
            picked.append(candidate)
            if len(picked) == n:
                break
    return picked


def word_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each whitespace-separated word in ``text``."""
    return [m.span() for m in _WORD.finditer(text)]


def drop_word_prefix(text: str, salt: str) -> str | None:
    """``text`` without its first k words, 1 <= k <= half its words; None if < 2 words.

    k is hashed from ``salt``. The rest keeps its original spacing (newlines
    included), since it is cut from ``text`` rather than re-joined from words.
    """
    spans = word_spans(text)
    half = len(spans) // 2
    if half < 1:
        return None
    k = 1 + stable_int("drop_word_prefix", salt) % half
    return text[spans[k][0] :]


def split_first_word(text: str) -> tuple[str, str] | None:
    """``(first word, rest)`` of ``text`` (rest with original spacing), or None if < 2 words."""
    spans = word_spans(text)
    if len(spans) < 2:
        return None
    return text[spans[0][0] : spans[0][1]], text[spans[1][0] :].rstrip()
